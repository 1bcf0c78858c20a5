"""Output files of an evaluation: metrics.csv, summary.json, report.md, report.html.

``report.html`` is self-contained: inline CSS, no script, and the per-class box plots
embedded as base64 PNG (matplotlib, Agg), so it opens without network. Every file is
written as one set through :func:`medattn.data.io.write_set_atomic`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from pathlib import Path
from typing import Sequence

from medattn.evaluation.conventions import conventions_markdown_table, conventions_rows

#: Metrics drawn as box plots, with their axis labels.
PLOTTED = {"dice": "Dice", "hd95": "HD95"}

_A_COLOUR, _B_COLOUR = "#4c72b0", "#dd8452"


def write_outputs(result, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write every output of ``result`` (an ``EvaluationResult``) into ``out_dir``.

    Returns:
        Output name to path: metrics.csv, summary.json, report.md, report.html, and with a
        comparison also metrics_compare.csv and comparison.csv.
    """
    from medattn.data.io import json_text, write_set_atomic

    # Everything is rendered before anything is written, and the set replaces the previous
    # one as a unit (an earlier run's comparison tables go when this run has none).
    contents = {"metrics.csv": _csv_text(result.metrics)}
    if result.compare_metrics is not None:
        contents["metrics_compare.csv"] = _csv_text(result.compare_metrics)
        contents["comparison.csv"] = _csv_text(result.comparison)
    contents["summary.json"] = json_text(result.summary)
    contents["report.md"] = markdown_report(result)
    contents["report.html"] = html_report(result)
    return write_set_atomic(out_dir, contents, stale=OUTPUT_SET)


#: Every file an evaluation writes.
OUTPUT_SET = ("metrics.csv", "metrics_compare.csv", "comparison.csv", "summary.json", "report.md", "report.html")


def _csv_text(table) -> str:
    # Default float formatting is repr, so values round-trip exactly.
    return table.to_csv(index=False, na_rep="NaN", lineterminator="\n")


def set_names(summary: dict) -> tuple[str, str]:
    """Short names of prediction sets A and B, from their folder names."""
    a = Path(summary["pred_dir"]).name or "A"
    if "compare" not in summary:
        return a, ""
    b = Path(summary["compare"]["pred_dir"]).name or "B"
    return (f"A ({a})", f"B ({b})") if a != b else ("A", "B")


# ---------------------------------------------------------------- tables as rows


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _mean_std(row, metric: str, digits: int = 4) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if isinstance(std, float) and math.isnan(std):
        return _fmt(mean, digits)
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def _class_table(per_class, mean: dict, units: dict) -> tuple[list[str], list[list[str]]]:
    d, v = units["distance"], units["volume"]
    headers = ["label", "name", "n", "Dice", f"HD95 ({d})", f"ASSD ({d})", f"volume diff ({v})", "excluded Dice/HD95"]
    rows = []
    for row in per_class.to_dict(orient="records"):
        rows.append([
            str(row["label"]), row["name"], str(row["dice_n"] + row["dice_excluded"]),
            _mean_std(row, "dice"), _mean_std(row, "hd95", 2), _mean_std(row, "assd", 2),
            _mean_std(row, "vol_diff", 0), f"{row['dice_excluded']}/{row['hd95_excluded']}",
        ])
    rows.append(["", "mean over classes", "", _fmt(mean["dice"]), _fmt(mean["hd95"], 2), _fmt(mean["assd"], 2),
                 _fmt(mean["vol_diff"], 0), ""])
    return headers, rows


def _comparison_table(comparison, names: tuple[str, str], units: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["class", "metric", "n", f"mean {names[0]}", f"mean {names[1]}", "mean diff (A − B)",
               "Wilcoxon p", "A wins / ties / losses"]
    rows = []
    for row in comparison[comparison["metric"].isin(list(PLOTTED))].to_dict(orient="records"):
        digits = 4 if row["metric"] == "dice" else 2
        metric = "Dice" if row["metric"] == "dice" else f"{row['metric'].upper()} ({units['distance']})"
        rows.append([
            row["name"], metric, str(row["n"]), _fmt(row["mean_a"], digits), _fmt(row["mean_b"], digits),
            _fmt(row["mean_diff"], digits), _fmt(row["p_value"], 4),
            f"{row['wins']} / {row['ties']} / {row['losses']}",
        ])
    return headers, rows


def _per_case_table(metrics, metric: str, digits: int) -> tuple[list[str], list[list[str]]]:
    wide = metrics.pivot(index="case", columns="name", values=metric)
    names = list(dict.fromkeys(metrics["name"]))  # label order
    headers = ["case"] + names
    rows = [[str(case)] + [_fmt(float(wide.loc[case, n]), digits) for n in names] for case in wide.index]
    return headers, rows


def _settings(summary: dict) -> list[tuple[str, str]]:
    names = set_names(summary)
    items = [("Predictions" + (f" {names[0]}" if "compare" in summary else ""), summary["pred_dir"])]
    if "compare" in summary:
        items.append((f"Compared with {names[1]}", summary["compare"]["pred_dir"]))
    items += [
        ("Ground truth", summary["gt_dir"]),
        ("Cases", str(summary["n_cases"])),
        ("Labels", f"{len(summary['labels'])} scored, from {summary['label_map']}"),
    ]
    if summary.get("ignore_label") is not None:
        items.append(("Ignore label", f"{summary['ignore_label']}: ground-truth voxels holding it are "
                                      "left out of every metric"))
    items += [
        ("Convention", f"{summary['convention']}: {summary['convention_rule']}"),
        ("Units", f"distances in {summary['units']['distance']}, volumes in {summary['units']['volume']} "
                  f"(spacing: {summary['spacing']})"),
        ("medattn", summary["medattn_version"]),
    ]
    return items


# ---------------------------------------------------------------- Markdown


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers))] + [line(r) for r in rows])


def markdown_report(result) -> str:
    """The Markdown report of an ``EvaluationResult``."""
    summary = result.summary
    units = summary["units"]
    names = set_names(summary)
    parts = ["# Segmentation evaluation", ""]
    parts += [f"- **{key}**: {value}" for key, value in _settings(summary)]
    title = f"Per class, {names[0]}" if result.comparison is not None else "Per class"
    parts += ["", f"## {title}", "", "Mean ± sample standard deviation over cases; NaN values are excluded "
              "and counted.", "", md_table(*_class_table(result.per_class, result.mean, units))]
    if result.comparison is not None:
        parts += ["", f"## Per class, {names[1]}", "",
                  md_table(*_class_table(result.compare_per_class, summary["compare"]["mean"], units))]
        parts += ["", "## Paired comparison", "",
                  "Cases where both values are defined; two-sided Wilcoxon signed-rank test, zero "
                  "differences dropped. A wins with a higher Dice or a lower distance.", "",
                  md_table(*_comparison_table(result.comparison, names, units))]
    parts += ["", "## Per case: Dice", "", md_table(*_per_case_table(result.metrics, "dice", 4))]
    parts += ["", f"## Per case: HD95 ({units['distance']})", "",
              md_table(*_per_case_table(result.metrics, "hd95", 2))]
    parts += ["", "## Empty-mask conventions", "", conventions_markdown_table(), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- HTML

REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f3f8; } td.t { text-align: left; }
tr:last-child td { font-weight: 600; }
table.plain tr:last-child td { font-weight: normal; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; }
"""


_NUMERIC_CELL = re.compile(r"^(n/a|[-+]?[\d,.]+( ± [\d,.]+)?|\d+ ?/ ?\d+( ?/ ?\d+)?)?$")


def _td(cell) -> str:
    text = str(cell)
    css = "" if _NUMERIC_CELL.match(text) else ' class="t"'  # text reads better left-aligned
    return f"<td{css}>{html.escape(text)}</td>"


def html_table(headers, rows, plain: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    css = ' class="plain"' if plain else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_head(title: str) -> str:
    """The start of a self-contained report page, up to and including ``<body>``."""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty data: icon stops the browser from requesting /favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
    ])


def html_report(result) -> str:
    """The self-contained HTML report of an ``EvaluationResult`` (box plots inline)."""
    summary = result.summary
    units = summary["units"]
    names = set_names(summary)
    settings = "".join(
        f"<dt>{html.escape(key)}</dt><dd>{html.escape(value)}</dd>" for key, value in _settings(summary)
    )
    parts = [
        html_head(f"Segmentation evaluation: {Path(summary['pred_dir']).name}"),
        "<h1>Segmentation evaluation</h1>",
        f"<dl>{settings}</dl>",
    ]
    title = f"Per class, {names[0]}" if result.comparison is not None else "Per class"
    parts += [f"<h2>{html.escape(title)}</h2>",
              '<p class="note">Mean ± sample standard deviation over cases; NaN values are excluded and counted.</p>',
              html_table(*_class_table(result.per_class, result.mean, units))]
    if result.comparison is not None:
        parts += [f"<h2>Per class, {html.escape(names[1])}</h2>",
                  html_table(*_class_table(result.compare_per_class, summary["compare"]["mean"], units)),
                  "<h2>Paired comparison</h2>",
                  '<p class="note">Cases where both values are defined; two-sided Wilcoxon signed-rank test, '
                  "zero differences dropped. A wins with a higher Dice or a lower distance.</p>",
                  html_table(*_comparison_table(result.comparison, names, units), plain=True)]
    for metric, label in PLOTTED.items():
        unit = "" if metric == "dice" else f" ({units['distance']})"
        png = box_plot_png(result, metric, f"{label}{unit}")
        parts += [f"<h2>{html.escape(label)} per class</h2>",
                  f'<img alt="{html.escape(label)} box plot per class" '
                  f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">']
    parts += _case_pictures_section(result)
    parts += ["<h2>Per case: Dice</h2>", html_table(*_per_case_table(result.metrics, "dice", 4), plain=True),
              f"<h2>Per case: HD95 ({html.escape(units['distance'])})</h2>",
              html_table(*_per_case_table(result.metrics, "hd95", 2), plain=True),
              "<h2>Empty-mask conventions</h2>", html_table(*conventions_rows(), plain=True),
              "</body></html>", ""]
    return "\n".join(parts)


def _case_pictures_section(result) -> list[str]:
    from medattn.evaluation.pictures import case_pictures, pictures_html

    images = result.summary.get("images_dir")
    where = ("on the intensity images of " + html.escape(images)) if images else \
        "on a blank background (pass --images for the intensity images)"
    note = (f"Per class the best, median and worst case by Dice: the axial slice where the ground truth is largest, "
            f"ground-truth contour (green), prediction A (red){', B (blue)' if result.comparison is not None else ''}, "
            f"{where}.")
    return ["<h2>Cases: best, median and worst per class</h2>", f'<p class="note">{note}</p>',
            pictures_html(case_pictures(result, images))]


def box_plot_png(result, metric: str, axis_label: str) -> bytes:
    """Box plot of ``metric`` per class (paired boxes with a comparison), as PNG bytes.

    NaN values are left out; a class without values gets no box.
    """
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    tables = [result.metrics] + ([result.compare_metrics] if result.compare_metrics is not None else [])
    colours = [_A_COLOUR, _B_COLOUR]
    class_names = list(dict.fromkeys(result.metrics["name"]))
    width = 0.8 / len(tables)
    # At most 11 in at 100 dpi: the page is 1100 px wide, so the text is never shrunk.
    fig_width = min(11.0, max(6.0, 0.5 * len(class_names) * len(tables) + 2))
    fig = Figure(figsize=(fig_width, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for i, table in enumerate(tables):
        data, positions = [], []
        for j, name in enumerate(class_names):
            values = table.loc[table["name"] == name, metric].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if values.size:
                data.append(values)
                positions.append(j + (i - (len(tables) - 1) / 2) * width)
        if data:
            ax.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                       boxprops={"facecolor": colours[i], "alpha": 0.75},
                       medianprops={"color": "black"}, flierprops={"markersize": 3})
    ax.set_xticks(range(len(class_names)), class_names, rotation=30 if len(class_names) > 6 else 0, ha="right"
                  if len(class_names) > 6 else "center")
    ax.set_xlim(-0.6, len(class_names) - 0.4)
    ax.set_ylabel(axis_label)
    ax.grid(axis="y", alpha=0.3)
    if len(tables) == 2:
        from matplotlib.patches import Patch

        names = set_names(result.summary)
        ax.legend(handles=[Patch(facecolor=c, alpha=0.75, label=n) for c, n in zip(colours, names)], loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
