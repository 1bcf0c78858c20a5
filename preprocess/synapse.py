"""Synapse multi-organ CT (BTCV) to an nnU-Net v2 raw dataset.

The Synapse benchmark used by TransUNet, Swin-Unet, nnFormer, UNETR++ and DSNet is the
labelled part of the MICCAI 2015 "Beyond the Cranial Vault" (BTCV) abdomen challenge
(https://www.synapse.org/#!Synapse:syn3193805): 30 contrast CT scans, 13 organ labels,
split by TransUNet (Chen et al., 2021, arXiv:2102.04306) into 18 training and 12 test
cases and scored on 8 organs.

Input layout (the raw download)::

    RawData/Training/img/img0001.nii.gz    RawData/Training/label/label0001.nii.gz
    RawData/Testing/img/img0061.nii.gz     (optional, unlabelled challenge test set)

Output (nnU-Net v2 raw)::

    Dataset501_Synapse/imagesTr/synapse_0005_0000.nii.gz   labelsTr/synapse_0005.nii.gz
    Dataset501_Synapse/imagesTs/synapse_0001_0000.nii.gz   labelsTs/synapse_0001.nii.gz
    Dataset501_Synapse/dataset.json
    Dataset501_Synapse/evaluate_labels_8organs.json

Images keep their voxel values (Hounsfield units), dtype and geometry; labels are written
as uint8 on the image's grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.preprocess.common import (
    ConversionError,
    ConversionReport,
    check_nifti_file,
    check_volume,
    dataset_folder,
    discover_numbered,
    label_values,
    map_cases,
    prune_stale_outputs,
    remap_labels,
    warn,
    write_dataset_json,
)

#: BTCV's 13 organ labels (challenge numbering).
BTCV_LABELS: dict[str, int] = {
    "background": 0,
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "inferior_vena_cava": 9,
    "portal_and_splenic_vein": 10,
    "pancreas": 11,
    "right_adrenal_gland": 12,
    "left_adrenal_gland": 13,
}

#: TransUNet's 8-organ label order (its ``test.py`` class order), used by ``--labels 8``.
TRANSUNET_LABELS: dict[str, int] = {
    "background": 0,
    "aorta": 1,
    "gallbladder": 2,
    "left_kidney": 3,
    "right_kidney": 4,
    "liver": 5,
    "pancreas": 6,
    "spleen": 7,
    "stomach": 8,
}

#: The 8 organs every Synapse paper reports, in TransUNet's order.
EVALUATED_ORGANS: tuple[str, ...] = tuple(name for name in TRANSUNET_LABELS if name != "background")

#: TransUNet's split of the 30 labelled BTCV scans (lists/lists_Synapse).
TRANSUNET_TEST_CASES: tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
TRANSUNET_TRAIN_CASES: tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)

#: The file written beside dataset.json for ``medattn evaluate --labels``.
EVALUATE_LABELS_FILE = "evaluate_labels_8organs.json"

MAX_BTCV_LABEL = max(BTCV_LABELS.values())
CASE_PREFIX = "synapse"
_IMAGE_PATTERN = r"img(\d{4})\.nii(?:\.gz)?"
_LABEL_PATTERN = r"label(\d{4})\.nii(?:\.gz)?"
#: Names this converter writes; anything else in the dataset folder is never touched.
_OUTPUT_PATTERN = CASE_PREFIX + r"_\d{4}(?:_\d{4})?\.nii\.gz"


def label_scheme(labels: int) -> tuple[dict[str, int], dict[int, int]]:
    """The output label names and the BTCV id -> output id mapping.

    Args:
        labels: 8 (TransUNet's organs and order; other BTCV ids become background) or
            13 (BTCV's own numbering, unchanged).

    Returns:
        ``(label_names, mapping)``: output name -> id, and BTCV id -> output id.

    Raises:
        ValueError: for any other number.
    """
    if labels == 8:
        return dict(TRANSUNET_LABELS), {BTCV_LABELS[name]: TRANSUNET_LABELS[name] for name in EVALUATED_ORGANS}
    if labels == 13:
        return dict(BTCV_LABELS), {i: i for i in BTCV_LABELS.values()}
    raise ValueError(f"labels must be 8 or 13, got {labels!r}")


def case_name(number: int) -> str:
    """The nnU-Net case identifier of BTCV case ``number``: 5 gives ``synapse_0005``."""
    return f"{CASE_PREFIX}_{number:04d}"


@dataclass(frozen=True)
class BtcvCase:
    """One BTCV scan and where it goes.

    Attributes:
        number: BTCV case number (the ``XXXX`` of ``imgXXXX.nii.gz``).
        image: the CT file.
        label: the label file, ``None`` when it is missing or the case is unlabelled.
        subset: "train", "test" (labelled, held out) or "unlabelled" (challenge test images).
    """

    number: int
    image: Path
    label: Path | None
    subset: str

    @property
    def name(self) -> str:
        return case_name(self.number)


# --------------------------------------------------------------------------- discovery


def find_raw_data(src: str | os.PathLike) -> Path:
    """The BTCV ``RawData`` folder: ``src`` itself or ``src/RawData``.

    Raises:
        FileNotFoundError: if neither holds ``Training/img``.
    """
    src = Path(src)
    for candidate in (src, src / "RawData"):
        if (candidate / "Training" / "img").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{src}: not a BTCV RawData folder (expected Training/img/imgXXXX.nii.gz and "
        f"Training/label/labelXXXX.nii.gz inside it or inside {src / 'RawData'})"
    )


def discover_btcv(src: str | os.PathLike) -> tuple[dict[int, tuple[Path, Path | None]], dict[int, Path]]:
    """Find the labelled and unlabelled BTCV cases.

    Returns:
        ``(labelled, unlabelled)``: case number -> (image, label or None) for
        ``Training``, and case number -> image for ``Testing`` (absent folder: empty).

    Raises:
        FileNotFoundError: if ``src`` is not a RawData folder.
        ConversionError: for two files of one case.
    """
    raw = find_raw_data(src)
    images = discover_numbered(raw / "Training" / "img", _IMAGE_PATTERN)
    label_dir = raw / "Training" / "label"
    labels = discover_numbered(label_dir, _LABEL_PATTERN) if label_dir.is_dir() else {}
    labelled = {n: (path, labels.get(n)) for n, path in images.items()}
    testing = raw / "Testing" / "img"
    unlabelled = discover_numbered(testing, _IMAGE_PATTERN) if testing.is_dir() else {}
    return labelled, unlabelled


def plan_cases(
    src: str | os.PathLike,
    *,
    split: str = "transunet",
    include_unlabelled: bool = True,
    report: ConversionReport | None = None,
) -> list[BtcvCase]:
    """Assign every BTCV case found in ``src`` to a subset.

    Args:
        src: the RawData folder (or its parent).
        split: "transunet" (18 train / 12 test, the published split) or "all" (every
            labelled case is a training case).
        include_unlabelled: also list ``Testing/img`` scans (subset "unlabelled").
        report: receives warnings about cases outside the split or missing from it.

    Returns:
        The cases sorted by number.

    Raises:
        ValueError: for an unknown ``split`` or when no case is found.
    """
    if split not in ("transunet", "all"):
        raise ValueError(f"split must be 'transunet' or 'all', got {split!r}")
    labelled, unlabelled = discover_btcv(src)
    raw = find_raw_data(src)
    cases: list[BtcvCase] = []
    if split == "all":
        subsets = {n: "train" for n in labelled}
    else:
        subsets = {n: "train" for n in TRANSUNET_TRAIN_CASES} | {n: "test" for n in TRANSUNET_TEST_CASES}
        missing = sorted(set(subsets) - set(labelled))
        if missing:
            warn(f"{len(missing)} case(s) of the TransUNet split are not in "
                 f"{raw / 'Training' / 'img'}: {missing}", report)
        outside = sorted(set(labelled) - set(subsets))
        if outside:
            warn(f"case(s) {outside} are not part of the TransUNet split and are left out (use --split all)", report)
    for number, (image, label) in labelled.items():
        if number in subsets:
            cases.append(BtcvCase(number, image, label, subsets[number]))
    orphan_labels = _labels_without_images(raw, labelled)
    if orphan_labels:
        warn(f"label file(s) without an image are ignored: {orphan_labels}", report)
    if include_unlabelled:
        clash = sorted(set(unlabelled) & set(labelled))
        if clash:
            warn(f"Testing/img case number(s) {clash} also exist in Training; the Testing copies are left out", report)
        cases += [BtcvCase(n, p, None, "unlabelled") for n, p in unlabelled.items() if n not in labelled]
    if not cases:
        raise ValueError(f"{raw}: no BTCV case to convert (looked for Training/img/imgXXXX.nii.gz)")
    return sorted(cases, key=lambda c: c.number)


def _labels_without_images(raw: Path, labelled: dict) -> list[str]:
    label_dir = raw / "Training" / "label"
    if not label_dir.is_dir():
        return []
    return [p.name for n, p in discover_numbered(label_dir, _LABEL_PATTERN).items() if n not in labelled]


# --------------------------------------------------------------------------- reading one case


def read_case(case: BtcvCase) -> tuple[np.ndarray, object, np.ndarray | None]:
    """Read and check one case's image and label.

    Returns:
        ``(image, geometry, label)``: the CT array (z, y, x) with its
        :class:`~medattn.data.io.Geometry`, and the label array (``None`` for unlabelled
        cases). Voxel values are untouched.

    Raises:
        ConversionError: (or its ``ValueError`` relatives from medattn.data.io) naming the
            case for an unreadable file, a missing label, a non-3D volume, NaNs, a
            geometry mismatch, label values outside 0..13 or an all-background label.
    """
    from medattn.data.io import check_same_geometry, read_image

    context = f"{case.name} ({case.image.name})"
    image, geometry = _read(read_image, case.image, case.name)
    check_volume(image, context)
    if case.subset == "unlabelled":
        return image, geometry, None
    if case.label is None:
        expected = case.image.parent.parent / "label" / f"label{case.number:04d}.nii.gz"
        raise ConversionError(f"{case.name}: missing label file (expected {expected})")
    label_context = f"{case.name} ({case.label.name})"
    label, label_geometry = _read(read_image, case.label, case.name)
    check_volume(label, label_context)
    pair = f"{case.name} ({case.image.name} vs {case.label.name})"
    check_same_geometry(geometry, label_geometry, names=("image", "label"), context=pair)
    present = label_values(label, label_context, max_label=MAX_BTCV_LABEL)
    if present.tolist() == [0]:
        raise ConversionError(f"{label_context}: the label map is empty (background only)")
    return image, geometry, label


def _read(reader, path: Path, name: str):
    check_nifti_file(path, f"{name} ({path.name})")
    try:
        return reader(path)
    except ValueError as err:  # ImageReadError names the file; add the case
        raise ConversionError(f"{name}: {err}") from err


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class _Job:
    case: BtcvCase
    folder: Path
    mapping: dict[int, int]


def _convert_case(job: _Job) -> list[Path]:
    """Write one case into the dataset folder; returns the files written."""
    from medattn.data.io import write_image

    case = job.case
    image, geometry, label = read_case(case)
    image_dir, label_dir = ("imagesTr", "labelsTr") if case.subset == "train" else ("imagesTs", "labelsTs")
    written = [write_image(image, geometry, job.folder / image_dir / f"{case.name}_0000.nii.gz")]
    if label is not None:
        mapped = remap_labels(label, job.mapping, case.name, max_label=MAX_BTCV_LABEL)
        written.append(write_image(mapped, geometry, job.folder / label_dir / f"{case.name}.nii.gz"))
    return written


def convert_synapse(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dataset_id: int = 501,
    dataset_name: str = "Synapse",
    labels: int = 8,
    split: str = "transunet",
    include_unlabelled: bool = True,
    jobs: int = 1,
) -> ConversionReport:
    """Convert the BTCV download into the nnU-Net v2 raw dataset ``DatasetXXX_Synapse``.

    Cases that fail (unreadable, mismatched geometry, missing label, unexpected label
    values, non-3D) are skipped and listed in the report; the others are written. Files
    are written atomically, and files of an earlier run that this run did not write are
    removed, so running again gives the same folder.

    Args:
        src: the BTCV ``RawData`` folder (or its parent).
        out: the nnU-Net raw folder (``nnUNet_raw``) to write the dataset into.
        dataset_id: nnU-Net dataset id, 1..999.
        dataset_name: the part after ``DatasetXXX_``.
        labels: 8 (TransUNet order, see :data:`TRANSUNET_LABELS`) or 13 (BTCV ids).
        split: "transunet" (12 test cases go to imagesTs/labelsTs) or "all".
        include_unlabelled: copy ``Testing/img`` scans into imagesTs.
        jobs: parallel worker threads.

    Returns:
        A :class:`~medattn.preprocess.common.ConversionReport`.

    Raises:
        ValueError: for bad arguments or a source without any case.
        FileNotFoundError: if ``src`` is not a BTCV RawData folder.
    """
    label_names, mapping = label_scheme(labels)
    folder = dataset_folder(out, dataset_id, dataset_name)
    report = ConversionReport(output=folder)
    cases = plan_cases(src, split=split, include_unlabelled=include_unlabelled, report=report)
    jobs_by_name = {case.name: _Job(case, folder, mapping) for case in cases}
    results, report.failed = map_cases(_convert_case, jobs_by_name, jobs=jobs, desc="Synapse -> nnU-Net")
    report.converted = sorted(results)
    written = [path for paths in results.values() for path in paths]
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        report.removed += prune_stale_outputs(folder / sub, written, _OUTPUT_PATTERN)
    subset_of = {case.name: case.subset for case in cases}
    training = [name for name in report.converted if subset_of[name] == "train"]
    write_dataset_json(
        folder,
        channel_names={"0": "CT"},
        labels=label_names,
        num_training=len(training),
        extra=_dataset_description(labels, split, mapping, subset_of, report.converted),
    )
    write_evaluate_labels(folder, label_names)
    return report


def _dataset_description(labels, split, mapping, subset_of, converted) -> dict:
    btcv_name = {v: k for k, v in BTCV_LABELS.items()}
    return {
        "name": "Synapse",
        "description": f"BTCV abdomen CT (MICCAI 2015), {split} split, {labels} labels; "
        "converted by medattn convert synapse",
        "reference": "https://www.synapse.org/#!Synapse:syn3193805",
        "source_label_ids": {btcv_name[src]: src for src, dst in sorted(mapping.items(), key=lambda x: x[1]) if dst},
        "test_cases": sorted(name for name in converted if subset_of[name] == "test"),
    }


def write_evaluate_labels(folder: Path, label_names: dict[str, int]) -> Path:
    """Write the 8-organ subset file that ``medattn evaluate --labels`` reads.

    Format (agreed with the evaluation code): dataset.json-style ``labels`` plus
    ``evaluate_labels``, the organ names to score::

        {"labels": {"background": 0, "spleen": 1, ...},
         "evaluate_labels": ["aorta", "gallbladder", ..., "stomach"]}
    """
    from medattn.data.io import write_json_atomic

    return write_json_atomic(
        folder / EVALUATE_LABELS_FILE,
        {"labels": dict(label_names), "evaluate_labels": list(EVALUATED_ORGANS)},
    )
