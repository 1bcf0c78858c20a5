"""What ``medattn bench study`` concludes from its runs: seed statistics, paired tests, the report.

Input: for every (variant, seed) run, the long metric table of ``medattn evaluate``
(:attr:`medattn.evaluation.EvaluationResult.metrics`: one row per test case and class,
columns ``case, label, dice, hd95, ...``), and the step cost of each variant.

- **Per class, over seeds.** Each run's per-class mean over test cases; then the mean and
  the sample standard deviation (ddof = 1, as the DIA and DSNet tables report; one seed
  has none) of those run means over the seeds. ``mean`` is the mean over classes.
- **Paired against stock, per seed.** The same seed means the same split, the same
  initial stock weights and the same augmentation stream, so a variant's run is paired
  with stock's run of that seed, case by case:
  :func:`medattn.evaluation.stats.paired_comparison` (two-sided Wilcoxon signed-rank test,
  zero differences dropped; wins/ties/losses are the variant's).
- **Paired against stock, pooled.** Decision: a case's value is first averaged over the
  seeds both variant and stock have, and the test runs over cases. The cases are the
  independent units; pooling the (seed, case) pairs instead would count each case once
  per seed and make the p-value too small.
- **Verdict** of a variant, from the pooled test of the per-case mean Dice over classes:
  "hurts" or "helps" when p < :data:`SIGNIFICANCE`, otherwise "no significant difference".
- **Cost.** The training-step time and the peak memory of one step, as ratios to stock,
  measured side by side in the same study run.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

REFERENCE = "stock"
SIGNIFICANCE = 0.05
METRICS = ("dice", "hd95")
MEAN = "mean"  # the key of the mean over classes

__all__ = ["MEAN", "REFERENCE", "SIGNIFICANCE", "html_report", "markdown_report", "summarise"]


def summarise(metrics: Mapping[tuple[str, int], "object"], labels: Mapping[int, str], variants: Sequence[str],
              costs: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Every statistic of a study, as plain JSON-ready values.

    Args:
        metrics: ``(variant, seed)`` to its long metric table (pandas DataFrame).
        labels: label value to class name, background excluded.
        variants: variant names in report order, :data:`REFERENCE` first.
        costs: variant to ``{"step_s", "peak_bytes"}`` (None: not measured).

    Returns:
        ``{"classes", "paired", "verdicts", "cost"}`` (see the module docstring).

    Raises:
        ValueError: if :data:`REFERENCE` is not the first variant, or a table is missing
            a metric column.
    """
    if not variants or variants[0] != REFERENCE:
        raise ValueError(f"the first variant must be {REFERENCE!r}, got {list(variants)}")
    for key, table in metrics.items():
        missing = [m for m in ("case", "label", *METRICS) if m not in table.columns]
        if missing:
            raise ValueError(f"run {key}: metric table lacks the columns {missing}")
    seeds = sorted({seed for _, seed in metrics})
    classes = {v: _class_statistics(metrics, v, seeds, labels) for v in variants}
    paired = {v: _paired(metrics, v, seeds, labels) for v in variants[1:]}
    verdicts = {v: verdict(paired[v]["pooled"]) for v in variants[1:]}
    return {"seeds": seeds, "classes": classes, "paired": paired, "verdicts": verdicts,
            "cost": _cost_ratios(costs, variants)}


def verdict(pooled_rows: Sequence[Mapping]) -> dict:
    """The variant's verdict from the pooled "mean over classes" Dice row."""
    row = next((r for r in pooled_rows if r["metric"] == "dice" and r["label"] == "all"), None)
    if row is None or row["n"] == 0:
        return {"verdict": "not compared", "mean_diff": math.nan, "p_value": math.nan}
    significant = row["p_value"] < SIGNIFICANCE
    word = ("helps" if row["mean_diff"] > 0 else "hurts") if significant else "no significant difference"
    return {"verdict": word, "mean_diff": row["mean_diff"], "p_value": row["p_value"],
            "wins": row["wins"], "ties": row["ties"], "losses": row["losses"], "n": row["n"]}


def _run_class_means(table, labels: Mapping[int, str]) -> dict[str, dict[str, float]]:
    """Per metric: each class's mean over cases (NaN skipped) and their mean over classes."""
    result = {}
    for metric in METRICS:
        values = {}
        for label in labels:
            column = table.loc[table["label"] == label, metric].to_numpy(dtype=float)
            column = column[np.isfinite(column)]
            values[str(label)] = float(column.mean()) if column.size else math.nan
        defined = [v for v in values.values() if not math.isnan(v)]
        values[MEAN] = float(np.mean(defined)) if defined else math.nan
        result[metric] = values
    return result


def _class_statistics(metrics, variant: str, seeds, labels) -> dict:
    runs = {seed: _run_class_means(metrics[(variant, seed)], labels) for seed in seeds if (variant, seed) in metrics}
    result = {}
    for metric in METRICS:
        per_key = {}
        for key in [*map(str, labels), MEAN]:
            per_seed = {str(seed): runs[seed][metric][key] for seed in runs}
            values = np.array([v for v in per_seed.values() if not math.isnan(v)], dtype=float)
            per_key[key] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
                "per_seed": per_seed,
            }
        result[metric] = per_key
    return result


def _paired(metrics, variant: str, seeds, labels) -> dict:
    from medattn.evaluation.stats import paired_comparison

    names = dict(labels)
    common = [s for s in seeds if (variant, s) in metrics and (REFERENCE, s) in metrics]
    per_seed = {
        str(seed): _records(paired_comparison(metrics[(variant, seed)], metrics[(REFERENCE, seed)], list(labels),
                                              names, metrics=METRICS))
        for seed in common
    }
    pooled = []
    if common:
        a = _seed_average([metrics[(variant, s)] for s in common])
        b = _seed_average([metrics[(REFERENCE, s)] for s in common])
        pooled = _records(paired_comparison(a, b, list(labels), names, metrics=METRICS))
    return {"seeds": common, "per_seed": per_seed, "pooled": pooled}


def _seed_average(tables):
    """Per (case, label): the mean of each metric over the tables (the seeds); NaN when
    any seed's value is undefined, so that a case counts only where every seed scored it."""
    import pandas as pd

    stacked = pd.concat([t[["case", "label", *METRICS]] for t in tables])
    grouped = stacked.groupby(["case", "label"], sort=True)[list(METRICS)]
    return grouped.mean().where(grouped.count() == len(tables)).reset_index()


def _records(frame) -> list[dict]:
    rows = frame.to_dict(orient="records")
    for row in rows:
        row["label"] = str(row["label"])
    return rows


def _cost_ratios(costs, variants) -> dict:
    if not costs or REFERENCE not in costs:
        return {}
    reference = costs[REFERENCE]
    result = {}
    for variant in variants:
        if variant not in costs:
            continue
        entry = dict(costs[variant])
        for key in ("step_s", "peak_bytes"):
            base, value = reference.get(key), entry.get(key)
            entry[f"{key}_ratio"] = value / base if base and value is not None else math.nan
        result[variant] = entry
    return result


# ----------------------------------------------------------------------------- reports


def _fmt(value, digits: int = 4, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(entry: Mapping, digits: int) -> str:
    mean, std = entry["mean"], entry["std"]
    return _fmt(mean, digits) if math.isnan(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def _p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _class_rows(study: Mapping, labels: Mapping[str, str]) -> tuple[list[str], list[list[str]]]:
    keys = [*labels, MEAN]
    headers = ["variant", *(f"Dice {labels[k]}" for k in labels), "mean Dice",
               *(f"HD95 {labels[k]}" for k in labels), "validation Dice", "step time ×stock", "peak memory ×stock"]
    rows = []
    for variant, stats in study["results"]["classes"].items():
        cost = study["results"]["cost"].get(variant, {})
        validation = study["runs"].get(variant, {})
        val = [r["validation_mean_dice"] for r in validation.values() if r.get("validation_mean_dice") is not None]
        rows.append([
            variant,
            *(_mean_std(stats["dice"][k], 4) for k in keys),
            *(_mean_std(stats["hd95"][k], 2) for k in labels),
            _fmt(float(np.mean(val)), 4) if val else "n/a",
            _fmt(cost.get("step_s_ratio"), 2),
            _fmt(cost.get("peak_bytes_ratio"), 2),
        ])
    return headers, rows


def _paired_rows(study: Mapping, labels: Mapping[str, str]) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "seed", "class", "Δ Dice", "Wilcoxon p", "wins/ties/losses", "Δ HD95", "p (HD95)"]
    rows = []
    names = {**labels, "all": "mean over classes"}
    for variant, paired in study["results"]["paired"].items():
        groups = [*((seed, rows_) for seed, rows_ in paired["per_seed"].items()), ("pooled", paired["pooled"])]
        for seed, records in groups:
            by_key = {(r["metric"], r["label"]): r for r in records}
            for label in [*labels, "all"]:
                dice, hd95 = by_key.get(("dice", label)), by_key.get(("hd95", label))
                if dice is None:
                    continue
                rows.append([variant, seed, names[label], _fmt(dice["mean_diff"], 4, sign=True), _p(dice["p_value"]),
                             f"{dice['wins']}/{dice['ties']}/{dice['losses']}",
                             _fmt(hd95["mean_diff"], 2, sign=True) if hd95 else "n/a",
                             _p(hd95["p_value"]) if hd95 else "n/a"])
    return headers, rows


def _verdict_rows(study: Mapping) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "verdict (pooled mean Dice, p < 0.05)", "Δ Dice", "p", "wins/ties/losses"]
    rows = []
    for variant, v in study["results"]["verdicts"].items():
        rows.append([variant, v["verdict"], _fmt(v["mean_diff"], 4, sign=True), _p(v["p_value"]),
                     f"{v.get('wins', 0)}/{v.get('ties', 0)}/{v.get('losses', 0)}"])
    return headers, rows


def _settings_lines(study: Mapping) -> list[tuple[str, str]]:
    settings, split = study["settings"], study["split"]
    return [
        ("engine", settings["engine"]),
        ("data", settings["data"]),
        ("variants", ", ".join(f"{name} = {text or 'no attention'}" for name, text in study["variants"].items())),
        ("seeds", " ".join(map(str, study["results"]["seeds"]))),
        ("budget", f"{study['budget']['steps']} optimizer steps per run "
                   f"({study['budget']['epochs']} epochs × {study['budget']['steps_per_epoch']} steps)"),
        ("split", f"{split['source']}: {len(split['train'])} training, {len(split['val'])} validation, "
                  f"{len(split['test'])} test cases"),
        ("selection", study["selection"]["rule"]),
        ("machine", _machine_line(study["machine"])),
    ]


def _machine_line(machine: Mapping) -> str:
    """One line of :func:`medattn.pipelines.bench_blocks.machine_description`'s record."""
    loads = " / ".join(" ".join(f"{v:.2f}" for v in machine[k]) for k in ("load_average_before", "load_average_after"))
    return (f"{machine['cpu']}, {machine['cpus_available']} of {machine['cpu_count']} CPUs, device "
            f"{machine['device']}, torch {machine['torch']} with {machine['torch_threads']} threads; "
            f"load average {loads} (start / end)")


def markdown_report(study: Mapping) -> str:
    """The study as Markdown (the tables of ``docs/benchmarks.md``)."""
    from medattn.evaluation.report import md_table

    labels = study["labels"]
    parts = ["# Study: stock against each block at an equal budget", ""]
    parts += [f"- **{key}**: {value}" for key, value in _settings_lines(study)]
    parts += ["", "## Test Dice and HD95 per class: mean ± std over seeds", "",
              "Each run's mean over test cases, then mean ± sample std over seeds. Validation Dice is the "
              "training run's own final validation (the only number any choice may use).", "",
              md_table(*_class_rows(study, labels)),
              "", "## Verdicts", "", md_table(*_verdict_rows(study)),
              "", "## Paired against stock, over test cases", "",
              "Per seed, and pooled (each case's value averaged over the seeds first). Two-sided Wilcoxon "
              "signed-rank test, zero differences dropped; wins are the variant's (higher Dice, lower HD95).", "",
              md_table(*_paired_rows(study, labels)), ""]
    return "\n".join(parts)


def html_report(study: Mapping) -> str:
    """The study as one self-contained HTML page."""
    import html

    from medattn.evaluation.report import html_head, html_table

    labels = study["labels"]
    settings = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _settings_lines(study))
    return "\n".join([
        html_head("Study: stock against each block"),
        "<h1>Study: stock against each block at an equal budget</h1>",
        f"<dl>{settings}</dl>",
        "<h2>Test Dice and HD95 per class: mean ± std over seeds</h2>",
        '<p class="note">Each run\'s mean over test cases, then mean ± sample std over seeds.</p>',
        html_table(*_class_rows(study, labels), plain=True),
        "<h2>Verdicts</h2>",
        html_table(*_verdict_rows(study), plain=True),
        "<h2>Paired against stock, over test cases</h2>",
        '<p class="note">Per seed, and pooled (each case averaged over the seeds first). Two-sided Wilcoxon '
        "signed-rank test, zero differences dropped; wins are the variant's.</p>",
        html_table(*_paired_rows(study, labels), plain=True),
        "</body></html>", "",
    ])
