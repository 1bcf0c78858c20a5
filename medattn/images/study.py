"""Several seeds and several networks, reported as the papers report them.

``medattn train image --preset resnet20 --compare sna_resnet20 dia_resnet164 --seeds 0 1 2``
trains every (network, seed) pair into ``out/<network>/seed_<k>/`` (each an ordinary,
resumable run folder) and writes ``out/comparison.json`` and ``out/comparison.md``:

- per network and metric: mean ± sample standard deviation over seeds (ddof = 1, as the
  DIA and DSNet tables report; a single seed has no std);
- per network against the reference: the differences paired by seed (same seed = same
  split, data order and augmentation), with their mean ± std, and how many seeds improved.

The reference is the first network without attention (a stock backbone), else the first
network given. Items of ``--compare`` are preset names, or placement texts applied to the
run's ``--backbone``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medattn.data.io import write_json_atomic, write_text_atomic
from medattn.images.metrics import PRIMARY

__all__ = ["Variant", "run_study", "summarise", "variants_of"]


class Variant:
    """One network of a study: a preset, or a backbone with a placement."""

    def __init__(self, preset: str | None = None, backbone: str | None = None, attention: str | None = None):
        self.preset, self.backbone, self.attention = preset, backbone, attention

    @property
    def name(self) -> str:
        if self.preset:
            return self.preset
        from medattn import placement

        spec = placement.parse(self.attention)
        return self.backbone if spec is None else f"{self.backbone}+{spec.slug()}"

    @property
    def stock(self) -> bool:
        from medattn.images.named_presets import preset

        return self.attention is None and (self.preset is None or preset(self.preset).attention is None)


def variants_of(config, compare: list[str]) -> list[Variant]:
    """The config's own network, then each ``--compare`` item (preset or placement)."""
    from medattn import placement
    from medattn.images.named_presets import PRESETS

    found = [Variant(config.preset, config.backbone, config.attention)]
    for item in compare:
        if item.lower() in PRESETS:
            found.append(Variant(preset=item.lower()))
        elif config.backbone is None:
            raise ValueError(f"--compare {item!r}: not a preset; placements need --backbone (presets: "
                             f"{sorted(PRESETS)})")
        else:
            placement.parse(item)  # a clear error for a bad placement, before any training
            found.append(Variant(backbone=config.backbone, attention=item))
    names = [v.name for v in found]
    if len(set(names)) != len(names):
        raise ValueError(f"the networks to compare repeat a name: {names}")
    return found


def run_study(config, compare: list[str], seeds: list[int], trainer_factory=None) -> dict:
    """Train every (network, seed) and write the comparison; returns its dict.

    Args:
        config: an :class:`~medattn.images.training.ImageTrainConfig`; its ``out`` is the
            study folder, its ``seed`` is replaced by each of ``seeds``.
        compare: further networks (see :func:`variants_of`).
        seeds: seeds to train.
        trainer_factory: builds a trainer from a config (tests), default ImageTrainer.
    """
    from medattn.images.training import ImageTrainConfig, ImageTrainer

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct, got {seeds}")
    factory = trainer_factory or ImageTrainer
    variants = variants_of(config, compare)
    out = Path(config.out)
    runs: dict[str, dict[int, dict]] = {}
    for variant in variants:
        for seed in seeds:
            run_config = ImageTrainConfig(**dict(
                config.to_dict(), preset=variant.preset, backbone=variant.backbone, attention=variant.attention,
                seed=seed, out=str(out / variant.name / f"seed_{seed}"),
                resume=config.resume or (out / variant.name / f"seed_{seed}" / "checkpoint_last.pt").exists()))
            runs.setdefault(variant.name, {})[seed] = factory(run_config).run()
    reference = next((v.name for v in variants if v.stock), variants[0].name)
    comparison = summarise(runs, reference, config.task)
    write_json_atomic(out / "comparison.json", comparison)
    write_text_atomic(out / "comparison.md", _markdown(comparison))
    return comparison


def _scalars(summary: dict, task: str) -> dict[str, float]:
    metric = PRIMARY[task]
    values = {metric: summary.get(metric)}
    if task == "classification":
        values["top5"] = summary.get("top5")
    for key in ("auroc", "iou"):
        for name, value in (summary.get(key) or {}).items():
            values[f"{key}_{name}"] = value
    return {k: (float("nan") if v is None else float(v)) for k, v in values.items()}


def _mean_std(values: list[float]) -> dict:
    array = np.array([v for v in values if not math.isnan(v)])
    if array.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else None,
            "n": int(array.size)}


def summarise(runs: dict[str, dict[int, dict]], reference: str, task: str) -> dict:
    """Mean ± std per network and metric, and paired differences against ``reference``."""
    networks = {}
    for name, by_seed in runs.items():
        per_seed = {seed: _scalars(summary, task) for seed, summary in by_seed.items()}
        metrics = sorted({m for values in per_seed.values() for m in values})
        entry = {"seeds": sorted(by_seed), "metrics": {m: _mean_std([per_seed[s].get(m, math.nan) for s in per_seed])
                                                        for m in metrics}, "per_seed": per_seed}
        if name != reference:
            base = {seed: _scalars(summary, task) for seed, summary in runs[reference].items()}
            paired = {}
            for m in metrics:
                diffs = [per_seed[s][m] - base[s][m] for s in per_seed if s in base and m in base[s]]
                diffs = [d for d in diffs if not math.isnan(d)]
                paired[m] = dict(_mean_std(diffs), improved=sum(d > 0 for d in diffs))
            entry["paired_difference"] = paired
        networks[name] = entry
    return {"task": task, "metric": PRIMARY[task], "reference": reference, "networks": networks}


def _fmt(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")


def _markdown(comparison: dict) -> str:
    metric = comparison["metric"]
    lines = [f"# {comparison['task']}: {metric}, mean ± std over seeds",
             "", f"Reference for the paired differences: `{comparison['reference']}` (same seed = same split, "
             "data order and augmentation).", "",
             f"| network | seeds | {metric} | Δ vs reference (paired) | seeds improved |", "|---|---|---|---|---|"]
    for name, entry in comparison["networks"].items():
        paired = entry.get("paired_difference", {}).get(metric)
        delta = "—" if paired is None else _fmt(paired)
        improved = "—" if paired is None else f"{paired['improved']} / {paired['n']}"
        lines.append(f"| `{name}` | {len(entry['seeds'])} | {_fmt(entry['metrics'][metric])} | {delta} | {improved} |")
    return "\n".join(lines) + "\n"
