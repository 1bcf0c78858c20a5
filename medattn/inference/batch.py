"""Batch prediction of label maps: :func:`predict` (what ``medattn predict`` runs).

The model type is detected from the path (:func:`detect_model`): an nnU-Net training
output folder (``plans.json``, ``dataset.json``, ``fold_X/``) or a checkpoint of the
MONAI path (a ``.pt`` file, or a ``medattn train monai`` output folder).

The batch is a pipeline over cases: ``-j`` worker threads read and preprocess the next
cases and write the finished ones while the device predicts the current case, which is
how ``nnUNetv2_predict`` keeps the GPU busy (it uses processes; threads suffice here since
numpy, SimpleITK and torch release the GIL, and they avoid its spawn pitfalls).

Reliability:

- nnU-Net's layout: the model's ``dataset.json`` and ``plans.json`` are copied beside
  the label maps, as ``nnUNetv2_predict`` does, so nnU-Net's ensembling and
  postprocessing commands run on the folder as they are;
- resumable: a case whose label map exists (and, with ``save_probabilities``, its
  ``.npz``/``.pkl``) is skipped unless ``overwrite``; the label map is written last, so its
  presence means the case is complete;
- atomic: every file is written to a temporary name and renamed
  (:func:`medattn.data.io.atomic_write`); temporary files left by a killed run are
  removed when the next run starts;
- a case that fails (unreadable or truncated file, wrong channel count, NaNs, ...) is
  reported with the file and the reason, and the batch goes on;
  :attr:`PredictionReport.failures` lists them.

Cascades: an nnU-Net ``3d_cascade_fullres`` model needs the ``3d_lowres`` stage's label
map of every case (``nnUNetv2_predict -prev_stage_predictions``). ``previous_stage`` gives
either that folder of label maps or the previous stage's model; without it the model
folder beside the cascade's (``{trainer}__{plans}__3d_lowres``) is used. A previous-stage
model predicts first, into ``output_dir/3d_lowres`` (resumable like any run), and a case it
fails on is reported once, with its reason, and not tried by the cascade stage.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from medattn.data.io import CaseFailure
from medattn.devices import resolve_device
from medattn.inference.naming import Case, collect_inputs, group_cases

__all__ = ["CaseFailure", "ModelSource", "PredictionReport", "detect_model", "load_backend", "predict",
           "resolve_device"]


@dataclass(frozen=True)
class ModelSource:
    """A model path and its type.

    Attributes:
        kind: "nnunet" or "monai".
        path: the nnU-Net training output folder, or the MONAI checkpoint file.
        fold: for an nnU-Net ``fold_X`` folder given directly, that fold.
    """

    kind: str
    path: Path
    fold: int | str | None = None


def detect_model(model: str | os.PathLike, checkpoint: str | None = None) -> ModelSource:
    """Tell an nnU-Net model folder from a MONAI-path checkpoint.

    Args:
        model: an nnU-Net training output folder (``{trainer}__{plans}__{config}`` holding
            ``plans.json``, ``dataset.json`` and ``fold_X/``) or one of its ``fold_X``
            folders; a MONAI checkpoint file (``.pt``/``.pth``) or the folder
            ``medattn train monai`` wrote.
        checkpoint: checkpoint file name inside a MONAI output folder.

    Raises:
        FileNotFoundError: if ``model`` does not exist.
        ValueError: if it is neither, saying what was expected.
    """
    from medattn.inference.monai_backend import CHECKPOINT_NAMES, find_monai_checkpoint
    from medattn.inference.nnunet_backend import is_nnunet_model

    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such file or folder")
    if path.is_dir() and is_nnunet_model(path):
        return ModelSource("nnunet", path)
    if path.is_dir() and path.name.startswith("fold_") and is_nnunet_model(path.parent):
        fold = path.name[len("fold_"):]
        return ModelSource("nnunet", path.parent, int(fold) if fold.isdigit() else fold)
    found = find_monai_checkpoint(path, checkpoint if path.is_dir() else None)
    if found is not None and found.suffix in (".pt", ".pth"):
        return ModelSource("monai", found)
    if path.is_dir() and (path / "config.json").is_file():  # a training folder whose checkpoints are gone
        names = checkpoint or " or ".join(CHECKPOINT_NAMES)
        present = sorted(p.name for p in path.glob("*.pt")) or ["none"]
        raise ValueError(f"--model {path}: a training output folder (it has config.json) without {names}; "
                         f"checkpoints there: {', '.join(present)} (choose one with --checkpoint, or train first)")
    raise ValueError(
        f"--model {path}: not a model. Expected an nnU-Net training output folder (with plans.json, "
        "dataset.json and fold_X/checkpoint_final.pth, e.g. nnUNet_results/Dataset990_Phantom/"
        "nnUNetTrainerDSM__nnUNetPlans__3d_fullres) or a MONAI checkpoint from `medattn train monai` "
        "(checkpoint_best.pt, or its output folder)"
    )


#: Sliding-window step as a fraction of the patch size: nnU-Net's default (0.5 overlap).
DEFAULT_STEP_SIZE = 0.5


def check_step_size(step_size: float) -> None:
    """Raise ``ValueError`` unless ``0 < step_size <= 1`` (a larger step would leave gaps)."""
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size <= 1:
        raise ValueError(f"step size must be in (0, 1] (a fraction of the patch size), got {step_size!r}")


def load_backend(source: ModelSource, *, folds=None, checkpoint: str | None = None, device="auto", tta: bool = True,
                 step_size: float = DEFAULT_STEP_SIZE, postprocessing: str | os.PathLike | None = None,
                 trust_model: bool = False):
    """The backend (:class:`~medattn.inference.backend.Backend`) for a detected model."""
    check_step_size(step_size)
    device = resolve_device(device) if isinstance(device, str) else device
    if source.kind == "nnunet":
        from medattn.inference.nnunet_backend import NNUNetBackend

        if folds is None and source.fold is not None:
            folds = [source.fold]
        return NNUNetBackend(source.path, folds, checkpoint, device, tta=tta, step_size=step_size,
                             postprocessing=postprocessing, trust=trust_model)
    if folds:
        raise ValueError(f"--folds applies to nnU-Net models; {source.path} is a single MONAI checkpoint")
    if postprocessing is not None:
        raise ValueError(f"--postprocessing (nnU-Net's postprocessing.pkl) applies to nnU-Net models; "
                         f"{source.path} is a MONAI checkpoint")
    from medattn.inference.monai_backend import MonaiBackend

    return MonaiBackend(source.path, device, tta=tta, step_size=step_size)


@dataclass
class PredictionReport:
    """What a :func:`predict` run did.

    Attributes:
        written: label maps written by this run, in case order.
        skipped: cases whose outputs existed already.
        failures: cases that failed, with the reason.
        seconds: per written case, the time its reading, prediction and writing took
            (reading and writing overlap other cases' predictions, so these add up to
            more than ``total_seconds`` when ``jobs`` > 0).
        total_seconds: wall time of the batch, from the first read to the last write (the
            model is loaded before).
        model: one line describing the model, folds, device and TTA.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    model: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """A few lines for the console: counts, time, and every failure."""
        n_cases = len(self.written) + len(self.skipped) + len(self.failures)
        lines = [f"{n_cases} case(s): {len(self.written)} predicted, {len(self.skipped)} skipped (outputs exist; "
                 f"--overwrite redoes them), {len(self.failures)} failed"]
        if self.written:
            lines.append(f"{self.total_seconds:.1f} s in all, {self.total_seconds / len(self.written):.2f} s per "
                         "predicted case")
        if self.failures:
            lines.append(f"FAILED ({len(self.failures)}):")
            lines += [f"  {failure.case}: {failure.message}" for failure in self.failures]
        return "\n".join(lines)


def predict(
    model: str | os.PathLike,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    tta: bool = True,
    step_size: float = DEFAULT_STEP_SIZE,
    save_probabilities: bool = False,
    overwrite: bool = False,
    jobs: int = 2,
    progress: bool = True,
    previous_stage: str | os.PathLike | None = None,
    postprocessing: str | os.PathLike | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    trust_model: bool = False,
) -> PredictionReport:
    """Predict a label map for every case of ``inputs`` into ``output_dir``.

    Args:
        model: nnU-Net training output folder or MONAI checkpoint (see :func:`detect_model`).
        inputs: a folder, or a list of folders and image files; ``CASE_0000.nii.gz`` (nnU-Net
            channel naming) gives ``CASE.nii.gz``, a plain ``CASE.nii.gz`` keeps its name.
        output_dir: where label maps (and probabilities) go; created if needed.
        folds: nnU-Net folds to ensemble; default every fold with a checkpoint.
        checkpoint: nnU-Net checkpoint name (default ``checkpoint_final.pth``), or the
            checkpoint file in a MONAI output folder.
        device: "auto", "cpu", "cuda", "cuda:1", "mps".
        tta: mirroring test-time augmentation.
        step_size: sliding-window step as a fraction of the patch size, in (0, 1]
            (nnU-Net's ``-step_size``; MONAI overlap ``1 - step_size``). 0.5, the default
            of both, is what nnU-Net validates with; 1 (no overlap) is about 2**dims
            times fewer windows, at some accuracy cost at window borders.
        save_probabilities: also write ``CASE.npz`` (class probabilities, (K, z, y, x)) and
            ``CASE.pkl``, as nnU-Net does.
        overwrite: predict cases whose outputs exist.
        jobs: worker threads for reading/preprocessing and for writing (each).
        progress: show a progress bar (per-case timing in its postfix).
        previous_stage: for an nnU-Net cascade stage model only: a folder of the previous
            stage's label maps (``CASE.nii.gz``), or the previous stage's model folder,
            which then predicts first into ``output_dir/{its configuration}``. Default: the
            sibling model folder ``{trainer}__{plans}__{previous configuration}``.
        postprocessing: nnU-Net models only: a ``postprocessing.pkl`` written by
            ``nnUNetv2_find_best_configuration`` (or ``nnUNetv2_determine_postprocessing``),
            applied to each label map before it is written, as
            ``nnUNetv2_apply_postprocessing`` would afterwards. Probabilities are saved
            before it, as nnU-Net saves them. A cascade's previous stage is not
            post-processed. The pickle is read by a restricted unpickler that admits
            nnU-Net's postprocessing functions only (see ``trust_model``).
        num_parts, part_id: predict only every ``num_parts``-th case of the sorted case
            names, starting at ``part_id`` (nnU-Net's ``-num_parts``/``-part_id``): run
            ``num_parts`` processes, one per GPU, with ``part_id`` 0 .. ``num_parts - 1``
            on the same output folder; together they predict every case once.
        trust_model: read nnU-Net checkpoints and ``postprocessing`` with full pickle
            support (:mod:`medattn.safe_loading`; ``--trust-model``). Without it, files
            that would need more than tensors, plain containers and nnU-Net's numpy types
            are refused before anything in them runs.

    Returns:
        A :class:`PredictionReport`; failures do not raise.

    Raises:
        FileNotFoundError, ValueError: for a missing or unusable model or input, an output
            folder that is an input folder, ``jobs < 1``, a step size outside (0, 1], a
            cascade stage without its previous stage, or ``previous_stage`` for a model
            that is not a cascade stage.
    """
    import torch

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs!r}")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"need num_parts >= 1 and 0 <= part_id < num_parts, got num_parts={num_parts!r}, "
                         f"part_id={part_id!r}")
    check_step_size(step_size)
    from medattn.data.io import check_output_folder

    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    output_dir = check_output_folder(output_dir, "--output")
    _check_output_not_input(output_dir, inputs)
    files = collect_inputs(inputs)
    source = detect_model(model, checkpoint)
    threads = torch.get_num_threads()
    try:
        backend = load_backend(source, folds=folds, checkpoint=checkpoint, device=device, tta=tta,
                               step_size=step_size, postprocessing=postprocessing, trust_model=trust_model)
        cases, problems = _this_part(*group_cases(files, backend.num_channels), num_parts, part_id)
        report = PredictionReport(model=backend.description)
        report.failures += [CaseFailure(p.name, p.message) for p in problems]
        if getattr(backend, "previous_stage_name", None):
            stage = _run_previous_stage(
                backend, source, previous_stage, [path for case in cases for path in case.files], output_dir,
                dict(folds=folds, checkpoint=checkpoint, device=device, tta=tta, step_size=step_size,
                     overwrite=overwrite, jobs=jobs, progress=progress, trust_model=trust_model),
            )
            failed = {failure.case for failure in report.failures}
            report.failures += [f for f in stage.failures if f.case not in failed]
            report.model += f"; previous stage: {stage.model}"
        elif previous_stage is not None:
            raise ValueError(f"--previous-stage {previous_stage}: {source.path} is not a cascade stage model "
                             "(its configuration names no previous stage)")
        output_dir.mkdir(parents=True, exist_ok=True)
        if num_parts == 1:  # parts share plans.json and dataset.json: one of them may be writing them now
            from medattn.data.io import remove_stale_temporaries

            remove_stale_temporaries(output_dir, {"plans.json", "dataset.json"})
        check_prediction_record(output_dir, prediction_record(source, backend, checkpoint, tta, step_size,
                                                              postprocessing), overwrite)
        if source.kind == "nnunet":
            _copy_model_files(source.path, output_dir)
        todo = []
        failed = {failure.case for failure in report.failures}
        for case in cases:
            _remove_stale_temporaries(case, output_dir)
            if case.name in failed:
                continue
            if not overwrite and _is_complete(case, output_dir, save_probabilities):
                report.skipped.append(case.name)
            else:
                todo.append(case)
        started = time.perf_counter()
        _Pipeline(backend, output_dir, save_probabilities, jobs, progress).run(todo, report)
        report.total_seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return report


#: The file in every prediction folder that says which model wrote its label maps.
RECORD = "medattn_predict.json"


def prediction_record(source: ModelSource, backend, checkpoint, tta: bool, step_size: float, postprocessing) -> dict:
    """What decides a label map: the model's checkpoint files (path, size, modification
    time, so a model retrained in place counts as another), its folds, TTA, step size and
    postprocessing. The device and worker counts are left out: they do not change it."""
    path = source.path.resolve()
    if path.is_file():
        files = [path]
    else:
        folds = getattr(backend, "folds", None)
        name = checkpoint or "checkpoint_final.pth"
        files = sorted(path.glob(f"fold_*/{name}")) if folds is None else [path / f"fold_{f}" / name for f in folds]
    return {
        "model": str(path),
        "checkpoints": [{"path": str(f), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
                        for f in files if f.is_file()],
        "folds": [str(f) for f in getattr(backend, "folds", None) or []],
        "tta": bool(tta), "step_size": float(step_size),
        "postprocessing": None if postprocessing is None else str(Path(postprocessing).resolve()),
    }


def check_prediction_record(output_dir: Path, record: dict, overwrite: bool) -> None:
    """Refuse to resume into label maps another model (or other settings) wrote; then record
    this model.

    Label maps without a record (written before medattn kept one, or by another tool) are
    refused too, since nothing says which model made them. ``overwrite`` replaces them.

    Raises:
        ValueError: naming the folder, both models and ``--overwrite``.
    """
    import json

    from medattn.data.io import list_images, write_json_atomic

    path = output_dir / RECORD
    existing = [p.name for p in list_images(output_dir) if not p.name.startswith(".")] if output_dir.is_dir() else []
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        stored = FileNotFoundError
    except (OSError, ValueError):
        stored = None
    if not overwrite and existing:
        if stored is FileNotFoundError:
            raise ValueError(f"{output_dir} holds {len(existing)} label map(s) (e.g. {existing[0]}) but no {RECORD} "
                             "saying which model wrote them; pass --overwrite to predict them again, or choose "
                             "another --output")
        if stored != record:
            what = "another model" if stored is None or stored.get("model") != record["model"] else "other settings"
            written_by = "an unreadable record" if stored is None else f"{stored.get('model')}"
            raise ValueError(f"{output_dir} holds label maps written by {what} ({written_by}; this is "
                             f"{record['model']}, {_settings_difference(stored, record)}); pass --overwrite to "
                             "replace them, or choose another --output")
    if stored != record:  # a resume with the same model leaves the folder untouched
        write_json_atomic(path, record)


def _settings_difference(stored: dict | None, record: dict) -> str:
    if not stored:
        return "no readable record"
    changed = [key for key in record if stored.get(key) != record[key]]
    return "differs in " + ", ".join(changed)


def _this_part(cases: list[Case], problems: list, num_parts: int, part_id: int) -> tuple[list[Case], list]:
    """The cases and grouping problems of part ``part_id`` of ``num_parts`` (every
    ``num_parts``-th name in sorted order, as nnU-Net splits them)."""
    if num_parts == 1:
        return cases, problems
    names = sorted({case.name for case in cases} | {problem.name for problem in problems})
    mine = set(names[part_id::num_parts])
    return [c for c in cases if c.name in mine], [p for p in problems if p.name in mine]


def _run_previous_stage(backend, source: ModelSource, previous_stage, files: list[Path], output_dir: Path,
                        options: dict) -> PredictionReport:
    """Point ``backend`` (a cascade stage) at the previous stage's label maps, predicting
    them first when ``previous_stage`` is a model (or is None and the sibling model exists).
    Returns that run's report (empty when label maps were given)."""
    name = backend.previous_stage_name
    if previous_stage is None:
        # nnU-Net names training outputs {trainer}__{plans}__{configuration}.
        parts = source.path.name.split("__")
        sibling = source.path.parent / "__".join([*parts[:2], name]) if len(parts) == 3 else None
        if sibling is None or not sibling.is_dir():
            missing = sibling or f"a folder named {{trainer}}__{{plans}}__{name} beside it"
            raise ValueError(
                f"{source.path}: a cascade stage needs the {name} stage first, and {missing} does not exist; "
                f"give --previous-stage: the {name} model folder, or a folder of its label maps (CASE.nii.gz)"
            )
        print(f"medattn predict: cascade: predicting the {name} stage first with {sibling}", file=sys.stderr)
        previous_stage = sibling
    from medattn.inference.nnunet_backend import is_nnunet_model

    previous_stage = Path(previous_stage)
    if not previous_stage.is_dir():
        raise FileNotFoundError(f"--previous-stage {previous_stage}: no such folder")
    is_fold = previous_stage.name.startswith("fold_") and is_nnunet_model(previous_stage.parent)
    # nnU-Net's prediction folders hold plans.json and dataset.json too, but no fold_X folders.
    is_model = is_nnunet_model(previous_stage) and any(previous_stage.glob("fold_*"))
    if not (is_model or is_fold):
        backend.previous_stage_dir = previous_stage
        return PredictionReport(model=f"label maps in {previous_stage}")
    stage_output = output_dir / name
    report = predict(previous_stage, files, stage_output, **options)
    backend.previous_stage_dir = stage_output
    return report


def _copy_model_files(model_dir: Path, output_dir: Path) -> None:
    """Put the model's ``dataset.json`` and ``plans.json`` beside the label maps, as
    ``nnUNetv2_predict`` does: ``nnUNetv2_ensemble``, ``nnUNetv2_apply_postprocessing`` and
    ``nnUNetv2_determine_postprocessing`` look for them in the folder they are given."""
    from medattn.data.io import atomic_write

    for name in ("dataset.json", "plans.json"):
        content = (model_dir / name).read_bytes()
        target = output_dir / name
        if not target.is_file() or target.read_bytes() != content:  # a resumed run leaves them be
            with atomic_write(target) as tmp:
                tmp.write_bytes(content)


def _check_output_not_input(output_dir: Path, inputs: list) -> None:
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == output_dir.resolve():
            raise ValueError(f"--output {output_dir} is also an input folder; label maps written there would be "
                             "read as inputs by the next run")


def _is_complete(case: Case, output_dir: Path, save_probabilities: bool) -> bool:
    """An existing label map counts as done only when its header reads and its grid is the
    input's (a 0-byte or foreign file is predicted again), and its probabilities exist when
    they are asked for."""
    from medattn.data.io import GeometryMismatchError, ImageReadError, check_same_geometry, read_header

    label = case.label_path(output_dir)
    if not label.is_file():
        return False
    try:
        check_same_geometry(read_header(case.files[0]), read_header(label), context=str(label))
    except (ImageReadError, GeometryMismatchError, ValueError):
        return False
    return not save_probabilities or all(p.is_file() and p.stat().st_size > 0 for p in case.probability_paths(output_dir))


def _remove_stale_temporaries(case: Case, output_dir: Path) -> None:
    """Delete the temporaries a killed run left for this case's files (only its own: other
    ``--num-parts`` processes may be writing theirs)."""
    from medattn.data.io import remove_stale_temporaries

    targets = {path.name for path in (case.label_path(output_dir), *case.probability_paths(output_dir))}
    remove_stale_temporaries(output_dir, targets)


class _Pipeline:
    """Read ahead and write behind on worker threads; predict on the calling thread."""

    def __init__(self, backend, output_dir: Path, save_probabilities: bool, jobs: int, progress: bool):
        self.backend = backend
        self.output_dir = output_dir
        self.save_probabilities = save_probabilities
        self.jobs = jobs
        self.progress = progress

    def run(self, cases: list[Case], report: PredictionReport) -> None:
        from tqdm.auto import tqdm

        if not cases:
            return
        readers = ThreadPoolExecutor(self.jobs, thread_name_prefix="medattn-read")
        writers = ThreadPoolExecutor(self.jobs, thread_name_prefix="medattn-write")
        bar = tqdm(total=len(cases), desc="predicting", unit="case", disable=not self.progress, dynamic_ncols=True)
        self._report, self._bar, self._timings = report, bar, {}
        writes: dict[Future, Case] = {}
        try:
            upcoming = iter(cases)
            reads: deque[tuple[Case, Future]] = deque()
            for case in upcoming:
                reads.append((case, self._submit_read(readers, case)))
                if len(reads) > self.jobs:
                    break
            while reads:
                case, reading = reads.popleft()
                following = next(upcoming, None)
                if following is not None:
                    reads.append((following, self._submit_read(readers, following)))
                result = self._predict(case, reading)
                if result is None:
                    continue
                self._drain(writes, block_while_more_than=self.jobs)
                writes[self._submit_write(writers, case, *result)] = case
            self._drain(writes, block_while_more_than=0)
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True, cancel_futures=True)
            bar.close()

    def _submit_read(self, pool: ThreadPoolExecutor, case: Case) -> Future:
        return pool.submit(_timed, self.backend.prepare, case)

    def _predict(self, case: Case, reading: Future):
        try:
            prepared, self._timings[case.name] = reading.result()
            started = time.perf_counter()
            result = self.backend.infer(prepared)
            self._timings[case.name] += time.perf_counter() - started
            return prepared, result
        except Exception as err:  # one bad case must not stop the batch
            self._fail(case, err)
            return None

    def _submit_write(self, pool: ThreadPoolExecutor, case: Case, prepared, result) -> Future:
        return pool.submit(_timed, self.backend.export, case, prepared, result, self.output_dir,
                           self.save_probabilities)

    def _drain(self, writes: dict[Future, Case], block_while_more_than: int) -> None:
        """Collect finished writes; wait while more than ``block_while_more_than`` are pending."""
        while writes:
            done = {f for f in writes if f.done()}
            if not done and len(writes) <= block_while_more_than:
                return
            if not done:
                done, _ = wait(list(writes), return_when=FIRST_COMPLETED)
            for future in done:
                case = writes.pop(future)
                error = future.exception()
                if error is not None:
                    self._fail(case, error)
                else:
                    self._succeed(case, self._timings.pop(case.name) + future.result()[1])

    def _succeed(self, case: Case, seconds: float) -> None:
        self._report.written.append(case.label_path(self.output_dir))
        self._report.seconds[case.name] = seconds
        self._bar.set_postfix_str(f"{case.name}: {seconds:.1f} s", refresh=False)
        self._bar.update(1)

    def _fail(self, case: Case, error: BaseException) -> None:
        from medattn.inference.backend import CaseError

        message = str(error) if isinstance(error, (CaseError, OSError)) else f"{type(error).__name__}: {error}"
        if str(case.files[0]) not in message:
            message = f"{case.files[0]}: {message}"
        self._report.failures.append(CaseFailure(case.name, message))
        self._bar.write(f"failed: {case.name}: {message}", file=sys.stderr)
        self._bar.update(1)


def _timed(function, *args):
    """``(function(*args), seconds it took)``."""
    started = time.perf_counter()
    return function(*args), time.perf_counter() - started
