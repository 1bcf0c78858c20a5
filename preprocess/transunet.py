"""TransUNet's preprocessed Synapse data, both ways.

TransUNet (Chen et al., 2021, arXiv:2102.04306) distributes Synapse as::

    train_npz/case0005_slice000.npz      one axial slice: "image" (H, W), "label" (H, W)
    test_vol_h5/case0001.npy.h5          one volume: "image" (D, H, W), "label" (D, H, W)
    lists/lists_Synapse/train.txt        slice names, e.g. "case0005_slice000"
    lists/lists_Synapse/test_vol.txt     volume names, e.g. "case0001"

Intensities are CT numbers clipped to [-125, 275] HU and scaled to [0, 1]
(``(hu + 125) / 400``); labels use TransUNet's 8-organ order
(:data:`~medattn.preprocess.synapse.TRANSUNET_LABELS`). Volumes are in SimpleITK's array
order (z, y, x), the order TransUNet's ``test.py`` writes back with
``GetImageFromArray``. The format stores no spacing, origin or direction.

* :func:`convert_transunet` restacks this data into an nnU-Net raw dataset, undoing the
  intensity scaling (so values are clipped HU, int16 when whole) unless asked not to. The geometry comes
  from the original BTCV files when given (``reference``), otherwise from
  :data:`DEFAULT_SPACING`, with a warning.
* :func:`export_transunet` writes this layout from the raw BTCV download, so results can
  be compared with TransUNet-family code.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.preprocess.common import (
    CaseFailure,
    ConversionError,
    ConversionReport,
    as_integer_labels,
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
from medattn.preprocess.synapse import (
    MAX_BTCV_LABEL,
    BtcvCase,
    case_name,
    label_scheme,
    plan_cases,
    read_case,
    write_evaluate_labels,
)

#: TransUNet's CT window in Hounsfield units; values outside are clipped.
HU_WINDOW: tuple[float, float] = (-125.0, 275.0)

#: Voxel size (x, y, z) in mm assumed when the TransUNet data come without the BTCV
#: originals. BTCV scans have 0.54-0.98 mm pixels and 2.5-5.0 mm slices (challenge
#: description); 0.76 x 0.76 x 3.0 mm lies in the middle of both ranges, so nnU-Net plans
#: an anisotropic network as it would for the real scans. Override with ``spacing``.
DEFAULT_SPACING: tuple[float, float, float] = (0.76, 0.76, 3.0)

#: Restored values this close to whole numbers are stored as int16 HU: float32 rounding
#: of ``(hu + 125) / 400`` and back stays below 1e-4 HU for the whole window.
WHOLE_HU_TOLERANCE = 0.01

SLICE_PATTERN = r"case(\d{4})_slice(\d{3,})\.npz"
VOLUME_PATTERN = r"case(\d{4})\.npy\.h5"
LISTS_SUBDIR = Path("lists") / "lists_Synapse"
_OUTPUT_PATTERN = r"synapse_\d{4}(?:_\d{4})?\.nii\.gz"


def hu_to_unit(image: np.ndarray) -> np.ndarray:
    """Clip to :data:`HU_WINDOW` and scale to [0, 1] as float32 (TransUNet's preprocessing)."""
    low, high = HU_WINDOW
    return ((np.clip(image.astype(np.float32), low, high) - low) / (high - low)).astype(np.float32)


def unit_to_hu(image: np.ndarray) -> np.ndarray:
    """Invert :func:`hu_to_unit`: [0, 1] back to clipped Hounsfield units, float32."""
    low, high = HU_WINDOW
    return (image.astype(np.float32) * np.float32(high - low) + np.float32(low)).astype(np.float32)


def _whole_hu(hu: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole HU number up to float32 rounding (data exported
    from integer CT, as TransUNet's and medattn's are), else the float32 values."""
    rounded = np.rint(hu)
    if np.abs(hu - rounded).max() <= WHOLE_HU_TOLERANCE:
        return rounded.astype(np.int16)
    return hu


def transunet_name(number: int) -> str:
    """TransUNet's case name: 5 gives ``case0005``."""
    return f"case{number:04d}"


# --------------------------------------------------------------------------- reading the TransUNet layout


def read_slice(path: Path, context: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of one ``.npz`` slice, both 2D with the same shape.

    Raises:
        ConversionError: naming ``context`` and the file for a corrupt file, missing keys,
            non-2D arrays or mismatched shapes.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("image", "label") if key not in data.files]
            if missing:
                raise ConversionError(f"{context}: {path.name} has no {missing} array (has {data.files})")
            image, label = data["image"], data["label"]
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConversionError(f"{context}: cannot read {path} ({err})") from err
    except ValueError as err:
        if isinstance(err, ConversionError):
            raise
        raise ConversionError(f"{context}: cannot read {path} ({err})") from err
    if image.ndim != 2 or image.shape != label.shape:
        raise ConversionError(
            f"{context}: {path.name} must hold 2D image and label of one shape, got {image.shape} and {label.shape}"
        )
    return image, label


def read_volume(path: Path, context: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of one ``.npy.h5`` test volume.

    Raises:
        ConversionError: naming ``context`` and the file for a corrupt file, missing
            datasets or mismatched shapes.
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            missing = [key for key in ("image", "label") if key not in h5]
            if missing:
                raise ConversionError(f"{context}: {path.name} has no {missing} dataset (has {sorted(h5.keys())})")
            image, label = h5["image"][()], h5["label"][()]
    except OSError as err:
        raise ConversionError(f"{context}: cannot read {path} ({err})") from err
    if image.shape != label.shape:
        raise ConversionError(f"{context}: {path.name} image shape {image.shape} != label shape {label.shape}")
    return image, label


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a TransUNet list file."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class TransUNetCase:
    """One case of a TransUNet folder.

    Attributes:
        number: the ``XXXX`` of ``caseXXXX``.
        subset: "train" (npz slices) or "test" (h5 volume).
        files: slice files ordered by slice index, or the single h5 file; ``None`` marks
            a file the list files name but that does not exist.
        indices: the slice index of each file (empty for a test volume).
    """

    number: int
    subset: str
    files: tuple[Path | None, ...]
    indices: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return case_name(self.number)


def discover_transunet(
    src: str | os.PathLike,
    lists_dir: str | os.PathLike | None = None,
    report: ConversionReport | None = None,
) -> list[TransUNetCase]:
    """Find the training slices and test volumes of a TransUNet folder.

    With list files (``lists_dir``, default ``src/lists/lists_Synapse``), the cases and
    slices they name are used, and a file they name but that is missing is recorded as
    ``None`` so that its case fails when loaded; without a list file every file found is
    used (with a warning).

    Raises:
        FileNotFoundError: if ``src`` holds neither ``train_npz`` nor ``test_vol_h5``.
        ConversionError: for a list entry that is not a TransUNet case or slice name.
    """
    src = Path(src)
    train_dir, test_dir = src / "train_npz", src / "test_vol_h5"
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise FileNotFoundError(f"{src}: not a TransUNet Synapse folder (no train_npz/ or test_vol_h5/ inside)")
    slices = _discover_slices(train_dir)
    volumes = discover_numbered(test_dir, VOLUME_PATTERN) if test_dir.is_dir() else {}
    lists_dir = Path(lists_dir) if lists_dir is not None else src / LISTS_SUBDIR
    train_list, test_list = lists_dir / "train.txt", lists_dir / "test_vol.txt"
    if train_list.is_file():
        slices = _listed_slices(train_list, slices, report)
    elif slices:
        warn(f"no {train_list}; using every slice in {train_dir}", report)
    if test_list.is_file():
        volumes = _listed_volumes(test_list, volumes)
    elif volumes:
        warn(f"no {test_list}; using every volume in {test_dir}", report)
    cases = [
        TransUNetCase(n, "train", tuple(files[i] for i in sorted(files)), tuple(sorted(files)))
        for n, files in slices.items()
    ]
    cases += [TransUNetCase(n, "test", (path,)) for n, path in volumes.items()]
    return sorted(cases, key=lambda c: c.number)


def _discover_slices(train_dir: Path) -> dict[int, dict[int, Path]]:
    regex = re.compile(SLICE_PATTERN)
    slices: dict[int, dict[int, Path]] = {}
    if not train_dir.is_dir():
        return slices
    for path in sorted(train_dir.iterdir()):
        match = regex.fullmatch(path.name)
        if match:
            slices.setdefault(int(match.group(1)), {})[int(match.group(2))] = path
    return dict(sorted(slices.items()))


def _listed_slices(train_list: Path, slices: dict[int, dict[int, Path]], report) -> dict[int, dict[int, Path | None]]:
    """The slices ``train.txt`` names; a named file that does not exist maps to ``None``."""
    regex = re.compile(SLICE_PATTERN[: -len(r"\.npz")])
    listed: dict[int, dict[int, Path | None]] = {}
    for entry in read_list(train_list):
        match = regex.fullmatch(entry)
        if not match:
            raise ConversionError(f"{train_list}: entry {entry!r} is not caseXXXX_sliceNNN")
        number, index = int(match.group(1)), int(match.group(2))
        listed.setdefault(number, {})[index] = slices.get(number, {}).get(index)
    unlisted = sum(1 for n, files in slices.items() for i in files if i not in listed.get(n, {}))
    if unlisted:
        warn(f"{unlisted} slice file(s) in train_npz are not named in {train_list} and are left out", report)
    return dict(sorted(listed.items()))


def _listed_volumes(test_list: Path, volumes: dict[int, Path]) -> dict[int, Path | None]:
    """The volumes ``test_vol.txt`` names; a named file that does not exist maps to ``None``."""
    listed: dict[int, Path | None] = {}
    for entry in read_list(test_list):
        match = re.fullmatch(r"case(\d{4})", entry)
        if not match:
            raise ConversionError(f"{test_list}: entry {entry!r} is not caseXXXX")
        listed[int(match.group(1))] = volumes.get(int(match.group(1)))
    return dict(sorted(listed.items()))


# --------------------------------------------------------------------------- TransUNet -> nnU-Net


def load_case(case: TransUNetCase, max_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Restack (training) or read (test) one case as ``(image, label)`` volumes (z, y, x).

    Raises:
        ConversionError: naming the case for missing or corrupt files, gaps in the slice
            indices, mismatched slice shapes, non-3D volumes or unexpected label values.
    """
    context = f"{case.name} ({transunet_name(case.number)})"
    if case.subset == "test":
        (path,) = case.files
        if path is None:
            raise ConversionError(f"{context}: test volume listed in test_vol.txt but missing from test_vol_h5/")
        image, label = read_volume(path, context)
    else:
        image, label = _stack_slices(case, context)
    check_volume(image, context)
    label_values(label, context, max_label=max_label)
    return image, as_integer_labels(label, context).astype(np.uint8)


def _stack_slices(case: TransUNetCase, context: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [index for index, path in zip(case.indices, case.files) if path is None]
    if missing:
        raise ConversionError(
            f"{context}: slice(s) {_short(missing)} listed in train.txt are missing from train_npz/"
        )
    if list(case.indices) != list(range(len(case.indices))):
        gaps = sorted(set(range(max(case.indices) + 1)) - set(case.indices))
        raise ConversionError(
            f"{context}: slice indices must run 0..{max(case.indices)} without gaps; missing {_short(gaps)}"
        )
    pairs = [read_slice(path, context) for path in case.files]
    shapes = {image.shape for image, _ in pairs}
    if len(shapes) != 1:
        raise ConversionError(f"{context}: slices have different shapes {sorted(shapes)}")
    return np.stack([image for image, _ in pairs]), np.stack([label for _, label in pairs])


def _short(values: list[int], limit: int = 10) -> str:
    return str(values[:limit])[:-1] + (f", ... ({len(values)} in all)]" if len(values) > limit else "]")


def read_reference_geometries(reference: str | os.PathLike) -> dict[int, Path]:
    """BTCV images to copy geometry from: case number -> ``imgXXXX.nii.gz``.

    ``reference`` is a BTCV RawData folder (Training/img and Testing/img are searched) or
    any folder holding ``imgXXXX.nii.gz`` files.

    Raises:
        FileNotFoundError: if no such image is found.
    """
    reference = Path(reference)
    folders = [reference]
    for raw in (reference, reference / "RawData"):
        folders += [raw / "Training" / "img", raw / "Testing" / "img"]
    found: dict[int, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for number, path in discover_numbered(folder, r"img(\d{4})\.nii(?:\.gz)?").items():
                found.setdefault(number, path)
    if not found:
        raise FileNotFoundError(f"{reference}: no BTCV imgXXXX.nii.gz found to take the geometry from")
    return found


def reference_geometry(path: Path, context: str):
    """The :class:`~medattn.data.io.Geometry` of a reference image, read from its header only.

    Raises:
        ConversionError: if the header cannot be read.
    """
    from medattn.data.io import ImageReadError, read_header

    try:
        return read_header(path)
    except ImageReadError as err:
        raise ConversionError(f"{context}: cannot read the header of {path}") from err


@dataclass(frozen=True)
class _ImportJob:
    case: TransUNetCase
    folder: Path
    max_label: int
    intensity: str
    spacing: tuple[float, float, float]
    use_reference: bool
    reference: Path | None


def _import_case(job: _ImportJob) -> list[Path]:
    from medattn.data.io import Geometry, write_image

    case = job.case
    context = f"{case.name} ({transunet_name(case.number)})"
    if job.use_reference and job.reference is None:
        raise ConversionError(f"{context}: no img{case.number:04d}.nii.gz in the --reference folder")
    image, label = load_case(case, job.max_label)
    if job.intensity == "hu":
        low, high = float(image.min()), float(image.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ConversionError(
                f"{context}: image values span [{low:g}, {high:g}], not TransUNet's [0, 1] scaling; "
                f"use --intensity scaled to keep them as they are"
            )
        image = _whole_hu(unit_to_hu(image))
    else:
        image = image.astype(np.float32)
    if job.use_reference:
        geometry = reference_geometry(job.reference, context)
        if geometry.shape != image.shape:
            raise ConversionError(
                f"{context}: restacked shape {image.shape} differs from reference {job.reference.name} {geometry.shape}"
            )
    else:
        geometry = Geometry(shape=image.shape, spacing=job.spacing, origin=(0.0, 0.0, 0.0),
                            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    image_dir, label_dir = ("imagesTr", "labelsTr") if case.subset == "train" else ("imagesTs", "labelsTs")
    return [
        write_image(image, geometry, job.folder / image_dir / f"{case.name}_0000.nii.gz"),
        write_image(label, geometry, job.folder / label_dir / f"{case.name}.nii.gz"),
    ]



def _assumed_spacing(spacing, report: ConversionReport) -> tuple[float, ...]:
    """The spacing to write when no reference geometry is given; warns when it is the default."""
    spacing = tuple(float(s) for s in (spacing or DEFAULT_SPACING))
    if spacing == DEFAULT_SPACING:
        warn(f"TransUNet files store no voxel spacing; assuming {spacing} mm (x, y, z), identity direction "
             f"and zero origin. Pass --spacing, or --reference RAWDATA for the exact BTCV geometry", report)
    return spacing


def _reject_duplicated_cases(cases, report: ConversionReport) -> list[int]:
    """Case numbers found both as training slices and as a test volume, recorded as failures:
    which of the two is right cannot be told from the files."""
    numbers = [case.number for case in cases]
    duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
    for number in duplicated:
        report.failed.append(CaseFailure(case_name(number), f"{case_name(number)}: {transunet_name(number)} "
                                         "appears both as training slices and as a test volume"))
    return duplicated

def convert_transunet(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dataset_id: int = 502,
    dataset_name: str = "SynapseTransUNet",
    lists_dir: str | os.PathLike | None = None,
    labels: int = 8,
    intensity: str = "hu",
    spacing: tuple[float, float, float] | None = None,
    reference: str | os.PathLike | None = None,
    jobs: int = 1,
) -> ConversionReport:
    """Convert TransUNet's preprocessed Synapse folder into an nnU-Net v2 raw dataset.

    Training slices are restacked by slice index into ``imagesTr``/``labelsTr``; test
    volumes go to ``imagesTs``/``labelsTs``. Case names match
    :func:`~medattn.preprocess.synapse.convert_synapse` (``synapse_XXXX``).

    Args:
        src: folder holding ``train_npz/`` and ``test_vol_h5/``.
        out: the nnU-Net raw folder to write ``DatasetXXX_name`` into.
        dataset_id: nnU-Net dataset id, 1..999.
        dataset_name: the part after ``DatasetXXX_``.
        lists_dir: folder with ``train.txt``/``test_vol.txt`` (default
            ``src/lists/lists_Synapse``); TransUNet keeps them in its code repository.
        labels: 8 (TransUNet's data) or 13 (an export made with 13 labels).
        intensity: "hu" maps [0, 1] back to clipped Hounsfield units [-125, 275] (int16
            when they come out as whole numbers, as for any export of integer CT);
            "scaled" keeps the values as stored (float32).
        spacing: voxel size (x, y, z) in mm when no ``reference`` is given; default
            :data:`DEFAULT_SPACING` with a warning, since the format stores none.
        reference: BTCV RawData (or a folder of ``imgXXXX.nii.gz``) to copy each case's
            exact spacing, origin and direction from.
        jobs: parallel worker threads.

    Returns:
        A :class:`~medattn.preprocess.common.ConversionReport`.

    Raises:
        ValueError: for bad arguments.
        FileNotFoundError: if ``src`` or ``reference`` hold no usable data.
    """
    if intensity not in ("hu", "scaled"):
        raise ValueError(f"intensity must be 'hu' or 'scaled', got {intensity!r}")
    label_names, _ = label_scheme(labels)
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ValueError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing!r}")
    folder = dataset_folder(out, dataset_id, dataset_name)
    report = ConversionReport(output=folder)
    cases = discover_transunet(src, lists_dir, report)
    if not cases:
        raise ValueError(
            f"{src}: no TransUNet case found (train_npz/caseXXXX_sliceNNN.npz, test_vol_h5/caseXXXX.npy.h5)"
        )
    references = read_reference_geometries(reference) if reference is not None else {}
    if reference is None:
        spacing = _assumed_spacing(spacing, report)
    duplicated = _reject_duplicated_cases(cases, report)
    jobs_by_name = {
        case.name: _ImportJob(case, folder, len(label_names) - 1, intensity, spacing or DEFAULT_SPACING,
                              reference is not None, references.get(case.number))
        for case in cases
        if case.number not in duplicated
    }
    results, failures = map_cases(_import_case, jobs_by_name, jobs=jobs, desc="TransUNet -> nnU-Net")
    report.failed = sorted(report.failed + failures, key=lambda f: f.case)
    report.converted = sorted(results)
    written = [path for paths in results.values() for path in paths]
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        report.removed += prune_stale_outputs(folder / sub, written, _OUTPUT_PATTERN)
    num_training = sum(1 for case in cases if case.name in results and case.subset == "train")
    write_dataset_json(
        folder,
        channel_names={"0": "CT"},
        labels=label_names,
        num_training=num_training,
        extra={
            "name": dataset_name,
            "description": "Synapse (BTCV) from TransUNet's preprocessed npz/h5 files; converted by "
            f"medattn convert transunet; intensities {'clipped HU [-125, 275]' if intensity == 'hu' else 'as stored'}",
            "geometry": "copied from BTCV reference images" if reference is not None
            else f"assumed spacing {list(spacing)} mm, identity direction, zero origin",
        },
    )
    write_evaluate_labels(folder, label_names)
    return report


# --------------------------------------------------------------------------- BTCV -> TransUNet


@dataclass(frozen=True)
class _ExportJob:
    case: BtcvCase
    out: Path
    mapping: dict[int, int]


def _export_case(job: _ExportJob) -> tuple[list[Path], list[str]]:
    """Write one case; returns the files written and the list entries (slice or volume names)."""
    from medattn.data.io import atomic_write

    case = job.case
    image, _, label = read_case(case)
    scaled = hu_to_unit(image)
    mapped = remap_labels(label, job.mapping, case.name, max_label=MAX_BTCV_LABEL)
    name = transunet_name(case.number)
    if case.subset == "test":
        path = job.out / "test_vol_h5" / f"{name}.npy.h5"
        with atomic_write(path) as tmp:
            _write_h5(tmp, scaled, mapped)
        return [path], [name]
    written, entries = [], []
    for index in range(scaled.shape[0]):
        entry = f"{name}_slice{index:03d}"
        path = job.out / "train_npz" / f"{entry}.npz"
        with atomic_write(path) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, image=scaled[index], label=mapped[index])
        written.append(path)
        entries.append(entry)
    return written, entries


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as h5:
        h5.create_dataset("image", data=image)
        h5.create_dataset("label", data=label)


def export_transunet(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: int = 8,
    split: str = "transunet",
    jobs: int = 1,
) -> ConversionReport:
    """Write TransUNet's Synapse layout from the raw BTCV download.

    CT values are clipped to [-125, 275] HU and scaled to [0, 1] (float32); training cases
    become axial ``.npz`` slices, test cases ``.npy.h5`` volumes, and
    ``lists/lists_Synapse/{train,test_vol}.txt`` name them. Like TransUNet's own files,
    npz and h5 are uncompressed (fast to write and read, about 1.3 MB per 512 x 512
    slice). Files of an earlier export that this one did not write are removed.

    Args:
        src: the BTCV ``RawData`` folder (or its parent).
        out: folder that receives ``train_npz/``, ``test_vol_h5/`` and ``lists/``.
        labels: 8 (TransUNet's order, what TransUNet code expects) or 13 (BTCV ids).
        split: "transunet" or "all" (every labelled case as training slices).
        jobs: parallel worker threads.

    Returns:
        A :class:`~medattn.preprocess.common.ConversionReport`.
    """
    from medattn.data.io import write_text_atomic

    _, mapping = label_scheme(labels)
    out = Path(out)
    report = ConversionReport(output=out)
    cases = plan_cases(src, split=split, include_unlabelled=False, report=report)
    results, report.failed = map_cases(
        _export_case, {c.name: _ExportJob(c, out, mapping) for c in cases}, jobs=jobs, desc="Synapse -> TransUNet"
    )
    report.converted = sorted(results)
    subset_of = {c.name: c.subset for c in cases}
    train_entries = [e for name in report.converted if subset_of[name] == "train" for e in results[name][1]]
    test_entries = [e for name in report.converted if subset_of[name] == "test" for e in results[name][1]]
    lists = out / LISTS_SUBDIR
    write_text_atomic(lists / "train.txt", "".join(f"{e}\n" for e in train_entries))
    write_text_atomic(lists / "test_vol.txt", "".join(f"{e}\n" for e in test_entries))
    written = [path for paths, _ in results.values() for path in paths]
    report.removed += prune_stale_outputs(out / "train_npz", written, SLICE_PATTERN)
    report.removed += prune_stale_outputs(out / "test_vol_h5", written, VOLUME_PATTERN)
    return report


__all__ = [
    "DEFAULT_SPACING",
    "HU_WINDOW",
    "convert_transunet",
    "discover_transunet",
    "export_transunet",
    "hu_to_unit",
    "unit_to_hu",
]
