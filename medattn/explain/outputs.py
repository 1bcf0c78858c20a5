"""Files of ``medattn explain``: NIfTI maps, PNG montages, channel-weight CSV and charts, index.html.

Layout of ``--out``::

    index.html                       every case's pictures, with links to the volumes
    CASE/
      BLOCK__MAP.nii.gz              a spatial map on the input's grid (size, spacing, origin,
                                     direction of the input file), float32
      BLOCK__MAP.png                 image, heat map and prediction contours: axial, coronal
                                     and sagittal planes through the foreground centre
      BLOCK__MAP__stage.nii.gz       with ``--stage-grids``: the map on the block's own
                                     feature grid, placed in physical space
      channel_weights.csv            block, map, channel, weight (mean over windows)
      BLOCK__channels.png            the block's channel weights (a heat map of blocks x
                                     channels for a DIA unit, bars otherwise)

Block names are the qualified module names with ``/`` and ``.`` made file-safe. Every file
is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path

import numpy as np

__all__ = ["safe_name", "write_case", "write_index"]


def safe_name(key: str) -> str:
    """``encoder.0.sna/weights`` -> ``encoder_0_sna__weights``."""
    block, _, name = key.rpartition("/")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", block) + "__" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _foreground_centre(labels: np.ndarray) -> tuple[int, ...]:
    points = np.argwhere(labels > 0)
    if points.size == 0:
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(v)) for v in points.mean(axis=0))


def _planes(volume: np.ndarray, centre, spacing) -> list[tuple[str, np.ndarray, float]]:
    """(name, slice, aspect) of the three planes through ``centre``; 2D images are one plane."""
    if volume.ndim == 2:
        return [("image", volume, spacing[1] / spacing[0])]
    z, y, x = centre
    sx, sy, sz = spacing
    return [("axial", volume[z], sy / sx), ("coronal", volume[:, y, :][::-1], sz / sx),
            ("sagittal", volume[:, :, x][::-1], sz / sy)]


def montage_png(image, heat, labels, spacing, title: str, dpi: int = 72) -> bytes:
    """Three planes: the image in grey, the map as a heat map over it, prediction contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = _foreground_centre(labels)
    planes = list(zip(_planes(image, centre, spacing), _planes(heat, centre, spacing), _planes(labels, centre, spacing)))
    figure, axes = plt.subplots(1, len(planes), figsize=(3.4 * len(planes), 3.6), dpi=dpi, squeeze=False)
    low, high = np.percentile(image, [1, 99])
    heat_low, heat_high = float(np.min(heat)), float(np.max(heat))
    for axis, ((name, grey, aspect), (_, hot, _), (_, label, _)) in zip(axes[0], planes):
        axis.imshow(grey, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect)
        shown = axis.imshow(hot, cmap="jet", alpha=0.45, vmin=heat_low, vmax=heat_high if heat_high > heat_low
                            else heat_low + 1e-6, aspect=aspect)
        if (label > 0).any() and not (label > 0).all():
            axis.contour((label > 0).astype(float), levels=[0.5], colors="white", linewidths=1.0)
        axis.set_title(name, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(shown, ax=axes[0].tolist(), fraction=0.025)
    figure.suptitle(title, fontsize=10)
    return _png(figure)


def channel_png(key: str, weights: dict[str, np.ndarray], dpi: int = 72) -> bytes:
    """Bars of one map's channel weights, or a heat map when a block has several (DIA's hₜ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 2.6), dpi=dpi)
    if len(weights) == 1:
        values = next(iter(weights.values()))
        axis.bar(np.arange(values.size), values, width=1.0, color="#4c72b0")
        axis.set_xlabel("channel")
        axis.set_ylabel("weight")
    else:
        matrix = np.stack(list(weights.values()))
        shown = axis.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        axis.set_yticks(range(len(weights)), labels=list(weights))
        axis.set_xlabel("channel")
        figure.colorbar(shown, ax=axis)
    axis.set_title(key, fontsize=9)
    return _png(figure)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    from medattn.data.io import atomic_write

    with atomic_write(path, suffix=path.suffix) as tmp:
        Path(tmp).write_bytes(data)


def write_case(case_name: str, explanation, out_dir: Path) -> dict:
    """Write one case's files; returns what the index lists."""
    from medattn.data.io import write_image, write_text_atomic

    folder = Path(out_dir) / case_name
    folder.mkdir(parents=True, exist_ok=True)
    spacing = tuple(explanation.geometry.spacing)
    entry = {"case": case_name, "maps": [], "channels": []}
    for key, volume in explanation.spatial.items():
        stem = safe_name(key)
        write_image(volume, explanation.geometry, folder / f"{stem}.nii.gz")
        _write_bytes(folder / f"{stem}.png", montage_png(explanation.image, volume, explanation.labels, spacing,
                                                        f"{case_name}: {key}"))
        item = {"key": key, "nifti": f"{case_name}/{stem}.nii.gz", "png": f"{case_name}/{stem}.png"}
        if key in explanation.stage_grids:
            values, grid = explanation.stage_grids[key]
            write_image(values, grid, folder / f"{stem}__stage.nii.gz")
            item["stage"] = f"{case_name}/{stem}__stage.nii.gz"
        entry["maps"].append(item)
    by_block: dict[str, dict[str, np.ndarray]] = {}
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["block", "map", "channel", "weight"])
    for key, values in explanation.channel.items():
        block, _, name = key.rpartition("/")
        by_block.setdefault(block, {})[name] = values
        writer.writerows([block, name, i, f"{v:.6g}"] for i, v in enumerate(values))
    if explanation.channel:
        write_text_atomic(folder / "channel_weights.csv", rows.getvalue())
    for block, weights in by_block.items():
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", block) + "__channels"
        _write_bytes(folder / f"{stem}.png", channel_png(block, weights))
        entry["channels"].append({"key": block, "png": f"{case_name}/{stem}.png"})
    return entry


def write_index(entries: list[dict], out_dir: Path, description: str) -> Path:
    """``index.html``: every case's montages and channel charts, linking the NIfTI maps."""
    from medattn.data.io import write_text_atomic
    from medattn.evaluation.report import html_head

    parts = [html_head("medattn explain"), "<h1>medattn explain</h1>", f'<p class="note">{html.escape(description)}</p>']
    for entry in entries:
        parts.append(f"<h2>{html.escape(entry['case'])}</h2>")
        if entry["maps"]:
            parts.append('<p class="note">Spatial maps on the input grid (open the NIfTI with the image in 3D Slicer '
                         "or ITK-SNAP: same size, spacing, origin and direction).</p>")
        for item in entry["maps"]:
            stage = (f', <a href="{html.escape(item["stage"])}">on the stage\'s grid</a>' if "stage" in item else "")
            parts.append(f'<h3>{html.escape(item["key"])} (<a href="{html.escape(item["nifti"])}">NIfTI</a>{stage})</h3>'
                         f'<img alt="{html.escape(item["key"])}" src="{html.escape(item["png"])}">')
        for item in entry["channels"]:
            parts.append(f'<h3>{html.escape(item["key"])}: channel weights</h3>'
                         f'<img alt="{html.escape(item["key"])} channel weights" src="{html.escape(item["png"])}">')
    parts += ["</body></html>", ""]
    return write_text_atomic(Path(out_dir) / "index.html", "\n".join(parts))
