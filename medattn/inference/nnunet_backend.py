"""nnU-Net models: nnU-Net's own predictor, driven case by case in this process.

Each step is nnU-Net's code, so a label map equals ``nnUNetv2_predict``'s for the same
model and settings: the reader/writer named in the plans, ``DefaultPreprocessor.run_case_npy``
(transpose, crop to non-zero, normalise, resample), ``nnUNetPredictor`` (sliding window
with step 0.5, Gaussian weighting, mirroring over the axes the trainer allowed, fold
ensembling) and ``convert_predicted_logits_to_segmentation_with_correct_shape`` (resample
back, argmax, uncrop, transpose back). What this module adds: medattn's trainers are
registered before the trainer class is looked up, inputs are checked and errors name the
file, and outputs are written atomically.

Cascade stage models (``3d_cascade_fullres``, whose configuration names a
``previous_stage``) take the previous stage's label map of each case as extra input, as
``nnUNetv2_predict -prev_stage_predictions`` does: nnU-Net's preprocessor crops and
resamples it with the image and its foreground labels are one-hot encoded behind the image
channels. :attr:`NNUNetBackend.previous_stage_dir` says where those label maps are; the
batch runner (:func:`medattn.inference.batch.predict`) fills it, predicting the previous
stage first when it is given a model.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medattn.data.io import atomic_write
from medattn.inference.backend import CaseError, check_finite, check_input_file, write_probabilities
from medattn.inference.naming import Case

__all__ = ["NNUNetBackend", "available_folds", "is_nnunet_model", "load_postprocessing"]

CHECKPOINT = "checkpoint_final.pth"


def is_nnunet_model(folder: Path) -> bool:
    """True for an nnU-Net training output folder (``plans.json``, ``dataset.json``, ``fold_*``)."""
    return (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()


def available_folds(folder: Path, checkpoint: str = CHECKPOINT) -> list[int | str]:
    """Folds of ``folder`` holding ``checkpoint``: numbered folds in order, else ``["all"]``."""
    numbered = sorted(
        int(p.name[len("fold_"):]) for p in folder.glob("fold_*")
        if p.name[len("fold_"):].isdigit() and (p / checkpoint).is_file()
    )
    if numbered:
        return numbered
    return ["all"] if (folder / "fold_all" / checkpoint).is_file() else []


def load_postprocessing(path: str | os.PathLike, trust: bool = False) -> tuple[list, list]:
    """nnU-Net's ``postprocessing.pkl``: ``(functions, keyword arguments)``, one pair per step.

    ``nnUNetv2_find_best_configuration`` writes it; each function takes a label map (and the
    keywords) and returns one, e.g. ``remove_all_but_largest_component_from_segmentation``
    with ``labels_or_regions``. An empty pair means "no postprocessing", which nnU-Net
    writes when removing components did not help. The pickle is read by
    :func:`medattn.safe_loading.load_postprocessing_pickle`: only nnU-Net's postprocessing
    functions are admitted unless ``trust``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a readable pickle of that shape, or names a refused
            global, naming the file.
    """
    from medattn.safe_loading import UntrustedFileError, load_postprocessing_pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--postprocessing {path}: no such file")
    try:
        steps = load_postprocessing_pickle(path, trust=trust)
    except UntrustedFileError as err:
        raise UntrustedFileError(f"--postprocessing {err}") from None
    except Exception as err:  # malformed pickles; with --trust-model, pickle's own errors
        cause = err.__cause__ or err
        raise ValueError(f"--postprocessing {path}: not a readable postprocessing.pkl "
                         f"({type(cause).__name__}: {cause})") from err
    valid = (isinstance(steps, (tuple, list)) and len(steps) == 2 and all(isinstance(s, list) for s in steps)
             and len(steps[0]) == len(steps[1]) and all(callable(f) for f in steps[0])
             and all(isinstance(k, dict) for k in steps[1]))
    if not valid:
        raise ValueError(f"--postprocessing {path}: expected nnU-Net's (functions, keyword arguments) lists of "
                         f"equal length, got {type(steps).__name__}")
    return steps[0], steps[1]


@dataclass
class _Prepared:
    data: torch.Tensor  # preprocessed (C, *spatial) float32
    properties: dict  # nnU-Net's properties of the case (geometry, crop box, shapes)
    input_shape: tuple[int, ...]  # array shape of the input in the reader's axis order


class NNUNetBackend:
    """Predict with a model trained by nnU-Net (any trainer, medattn's included).

    Args:
        model_dir: the training output folder ``{trainer}__{plans}__{configuration}``.
        folds: folds to ensemble (ints or "all"); None: every fold holding ``checkpoint``.
        checkpoint: checkpoint file name inside each fold folder.
        device: where the network runs.
        tta: mirroring test-time augmentation over the axes the trainer allowed.
        step_size: sliding-window step as a fraction of the patch size (nnU-Net's
            ``tile_step_size``).
        postprocessing: nnU-Net's ``postprocessing.pkl`` (:func:`load_postprocessing`),
            applied to each label map before it is written.

    Raises:
        ValueError: for a missing fold or checkpoint, naming what is available, or an
            unusable postprocessing file.
    """

    kind = "nnunet"

    def __init__(self, model_dir: Path, folds: Sequence[int | str] | None, checkpoint: str | None,
                 device: torch.device, tta: bool = True, step_size: float = 0.5,
                 postprocessing: str | os.PathLike | None = None, trust: bool = False):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        from medattn.nnunet import register_trainers
        from medattn.safe_loading import UntrustedFileError

        checkpoint = checkpoint or CHECKPOINT
        folds = _check_folds(model_dir, folds, checkpoint)
        self.folds = list(folds)  # what the ensemble uses (the prediction record names them)
        self.postprocessing = load_postprocessing(postprocessing, trust) if postprocessing is not None else ([], [])
        register_trainers()
        # nnU-Net prints its trainer search and device notes; keep them for errors only.
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                predictor = nnUNetPredictor(
                    tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                    perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False,
                )
                self.legacy_note = _initialize(predictor, model_dir, folds, checkpoint, trust)
        except UntrustedFileError:
            raise
        except Exception as err:
            raise ValueError(f"{model_dir}: cannot load the nnU-Net model ({type(err).__name__}: {err})\n"
                             f"{chatter.getvalue().strip()}") from err
        self.predictor = predictor
        self.plans_manager = predictor.plans_manager
        self.configuration_manager = predictor.configuration_manager
        self.dataset_json = predictor.dataset_json
        self.label_manager = predictor.label_manager
        #: the previous stage's configuration name ("3d_lowres") for a cascade stage model, else None
        self.previous_stage_name = self.configuration_manager.previous_stage_name
        #: folder of the previous stage's label maps (``CASE.nii.gz``); required for a cascade stage
        self.previous_stage_dir: Path | None = None
        network_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                        self.dataset_json)
        # A cascade network also reads the previous stage's one-hot label map; the user gives images only.
        self.num_channels = network_channels - (len(self.label_manager.foreground_labels)
                                                if self.previous_stage_name else 0)
        mirroring = predictor.allowed_mirroring_axes if tta else None
        self.description = (
            f"nnU-Net {predictor.trainer_name}{self.legacy_note}, folds {', '.join(map(str, folds))} ({checkpoint}), "
            f"{device}, TTA mirroring axes {tuple(mirroring) if mirroring else 'none'}, step size {step_size}"
        )
        if postprocessing is not None:
            steps = ", ".join(f"{getattr(f, '__name__', f)}({k})" for f, k in zip(*self.postprocessing))
            self.description += f", postprocessing: {steps or 'none (the file lists no step)'}"

    def prepare(self, case: Case) -> _Prepared:
        """Read the case with the plans' reader, check it and preprocess it as nnU-Net does."""
        # A 3D model needs volumes; a 2D model predicts 2D images and volumes slice by slice.
        needs = 3 if len(self.configuration_manager.patch_size) == 3 else None
        for path in case.files:
            check_input_file(path, needs)
        reader = self.plans_manager.image_reader_writer_class()
        try:
            data, properties = reader.read_images([str(p) for p in case.files])
        except Exception as err:  # nnU-Net's readers print details and raise bare RuntimeErrors
            raise CaseError(f"{', '.join(map(str, case.files))}: cannot read the channels together "
                            f"({type(err).__name__}: {err or 'shape or spacing differ between channels'})") from err
        if data.shape[0] != self.num_channels:
            raise CaseError(f"{', '.join(map(str, case.files))}: wrong channel count: {data.shape[0]} channel(s), "
                            f"the model needs {self.num_channels}")
        check_finite(data, case.files)
        input_shape = tuple(data.shape[1:])
        previous = self._read_previous_stage(case, input_shape) if self.previous_stage_name else None
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        # Without a segmentation, run_case_npy still returns one (the crop's non-zero mask).
        data, preprocessed_previous, properties = preprocessor.run_case_npy(
            data, previous, properties, self.plans_manager, self.configuration_manager, self.dataset_json
        )
        if previous is not None:
            from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

            labels = self.label_manager.foreground_labels
            data = np.vstack((data, convert_labelmap_to_one_hot(preprocessed_previous[0], labels, data.dtype)))
        return _Prepared(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), properties, input_shape)

    def _read_previous_stage(self, case: Case, input_shape: tuple[int, ...]) -> np.ndarray:
        """The previous stage's label map of ``case`` (1, *spatial), read as nnU-Net reads it."""
        if self.previous_stage_dir is None:
            raise ValueError(f"a cascade stage model needs the {self.previous_stage_name} stage's label maps: "
                             "set previous_stage_dir")
        path = case.label_path(self.previous_stage_dir)
        if not path.is_file():
            raise CaseError(f"{path}: no {self.previous_stage_name} label map for case {case.name} "
                            "(the cascade stage needs the previous stage's prediction of every case)")
        check_input_file(path)
        try:
            previous, _ = self.plans_manager.image_reader_writer_class().read_seg(str(path))
        except Exception as err:
            raise CaseError(f"{path}: cannot read the {self.previous_stage_name} label map "
                            f"({type(err).__name__}: {err})") from err
        if tuple(previous.shape[1:]) != input_shape:
            raise CaseError(f"{path}: {self.previous_stage_name} label map shape {tuple(previous.shape[1:])} "
                            f"differs from the image's {input_shape} ({case.files[0]})")
        labels = [int(label) for label in self.label_manager.all_labels]
        unknown = sorted(set(np.unique(previous).tolist()) - set(labels))
        if unknown:
            raise CaseError(f"{path}: unknown label(s) {', '.join(f'{v:g}' for v in unknown)} in the "
                            f"{self.previous_stage_name} label map; the model's labels are {labels}")
        return previous

    def infer(self, prepared: _Prepared) -> torch.Tensor:
        """Logits on the preprocessed grid, averaged over folds (and mirrorings)."""
        return self.predictor.predict_logits_from_preprocessed_data(prepared.data).cpu()

    def export(self, case: Case, prepared: _Prepared, logits: torch.Tensor, output_dir: Path,
               save_probabilities: bool) -> None:
        """Resample back to the input grid, argmax, and write (probabilities first, label map last)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        result = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, prepared.properties,
            return_probabilities=save_probabilities,
            # the current count: nnU-Net's default would change the process-wide setting under the
            # main thread's prediction
            num_threads_torch=torch.get_num_threads(),
        )
        segmentation, probabilities = result if save_probabilities else (result, None)
        if tuple(segmentation.shape) != prepared.input_shape:
            raise CaseError(f"{case.files[0]}: internal error: label map shape {tuple(segmentation.shape)} "
                            f"differs from the input's {prepared.input_shape}")
        if probabilities is not None:
            write_probabilities(case, output_dir, probabilities, prepared.properties)
        if self.postprocessing[0]:
            from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

            segmentation = apply_postprocessing(segmentation, *self.postprocessing)
        target = case.label_path(output_dir)
        writer = self.plans_manager.image_reader_writer_class()
        with atomic_write(target, suffix=case.suffix) as tmp:
            writer.write_seg(segmentation, str(tmp), prepared.properties)


def _initialize(predictor, model_dir: Path, folds, checkpoint_name: str, trust: bool) -> str:
    """Initialise ``predictor`` from a training output folder, as nnU-Net's
    ``initialize_from_trained_model_folder`` does, but reading every checkpoint with
    :func:`medattn.safe_loading.load_checkpoint` (nnU-Net's own reader unpickles anything).

    A checkpoint of medattn < 0.2 whose trainer name now places its blocks elsewhere is
    predicted with the trainer that has the old placement now.

    Returns:
        A note for the model description ("" normally).
    """
    import json

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medattn.nnunet.network import LegacyPlacementError
    from medattn.safe_loading import load_checkpoint

    def read_json(name: str) -> dict:
        try:
            return json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{model_dir / name}: not a readable JSON file ({type(err).__name__}: {err})") from None

    dataset_json = read_json("dataset.json")
    plans_manager = PlansManager(read_json("plans.json"))
    saved = [load_checkpoint(model_dir / f"fold_{fold}" / checkpoint_name, trust=trust) for fold in folds]
    parameters = [checkpoint["network_weights"] for checkpoint in saved]
    trainer_name = saved[0]["trainer_name"]
    configuration_manager = plans_manager.get_configuration(saved[0]["init_args"]["configuration"])

    def build(name: str):
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        network = recursive_find_trainer_class_by_name(name).build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, False,
        )
        network.load_state_dict(parameters[0])
        return network

    note = ""
    try:
        network = build(trainer_name)
    except LegacyPlacementError as legacy:
        if legacy.replacement is None:
            raise
        network, note = build(legacy.replacement), (f" (trained as {legacy.trainer} of medattn < 0.2, predicted as "
                                                    f"{legacy.replacement}, which has that placement now)")
        trainer_name = legacy.replacement
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, saved[0].get("inference_allowed_mirroring_axes"))
    return note


def _check_folds(model_dir: Path, folds, checkpoint: str) -> list[int | str]:
    available = available_folds(model_dir, checkpoint)
    if folds is None:
        if not available:
            raise ValueError(f"{model_dir}: no fold_*/{checkpoint} found (has training finished? "
                             "pick another file with --checkpoint, e.g. checkpoint_best.pth)")
        return available
    wanted = [f if f == "all" else int(f) for f in folds]
    missing = [f for f in wanted if not (model_dir / f"fold_{f}" / checkpoint).is_file()]
    if missing:
        raise ValueError(f"{model_dir}: no {checkpoint} for fold(s) {', '.join(map(str, missing))}; "
                         f"available: {', '.join(map(str, available)) or 'none'}")
    return wanted
