"""The models ``medattn explain`` reads: one source per engine, each reusing its predictor.

A source gives :class:`~medattn.explain.volumes.VolumeExplainer` what it needs and nothing
engine-specific leaks past it:

- ``network`` (bare, in eval mode), ``flips`` (the prediction's mirroring, as tensor dims),
  ``stages`` (encoder stage names from the engine's placement adapter), ``num_classes``,
  ``num_channels``, ``description``, ``roi`` and ``overlap`` of the sliding window;
- ``weight_sets()``: loads each fold's weights in turn (one set for a MONAI checkpoint);
- ``prepare(case)``, ``network_input(prepared)``, ``labels(prepared)`` (the prediction on
  the input grid), ``to_input_grid(prepared, maps)``, ``geometry(case, prepared)`` and
  ``network_affine(case, prepared)`` (where the network's input voxels lie in physical
  space, for the maps on each stage's own grid).

:class:`MonaiSource` wraps :class:`~medattn.inference.monai_backend.MonaiBackend` (its
transforms, and ``Invertd`` back to the input grid). :class:`NnUNetSource` wraps
:class:`~medattn.inference.nnunet_backend.NNUNetBackend` (nnU-Net's reader and
preprocessor); its maps go back the way nnU-Net's probabilities go: the plans' probability
resampling (linear in-plane; along z nearest for anisotropic spacing, as nnU-Net does),
then into the crop box (zero outside nnU-Net's crop to the non-zero region), then the
plans' ``transpose_backward``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

__all__ = ["MonaiSource", "NnUNetSource", "open_source"]


def open_source(model, device: torch.device, tta: bool = True):
    """The source of ``model``: a MONAI checkpoint or an nnU-Net model folder.

    Raises:
        FileNotFoundError, ValueError: for a missing or unusable model, naming it.
    """
    from medattn.inference.batch import detect_model

    found = detect_model(model)
    if found.kind == "nnunet":
        return NnUNetSource(found.path, [found.fold] if found.fold is not None else None, device, tta)
    return MonaiSource(found.path, device, tta)


class MonaiSource:
    """A ``medattn train monai`` checkpoint, through the prediction's backend."""

    def __init__(self, checkpoint, device: torch.device, tta: bool = True):
        from medattn.inference.monai_backend import MirroredNetwork, MonaiBackend
        from medattn.networks.builders import MonaiAdapter

        self.backend = backend = MonaiBackend(checkpoint, device, tta=tta)
        wrapped = backend.network
        self.network = wrapped.network if isinstance(wrapped, MirroredNetwork) else wrapped
        self.flips = list(wrapped.flips) if isinstance(wrapped, MirroredNetwork) else []
        config = backend.config["network"]
        self.stages = [s.name for s in MonaiAdapter(config["name"], config["spatial_dims"]).stages(self.network)]
        self.num_classes, self.num_channels = backend.num_classes, backend.num_channels
        self.description, self.device = backend.description, device
        self.roi, self.overlap = tuple(backend.transforms.roi), backend.overlap

    def weight_sets(self):
        yield "checkpoint"

    def prepare(self, case):
        return self.backend.prepare(case)

    def network_input(self, prepared) -> torch.Tensor:
        return prepared.data["image"].as_tensor()[None].to(self.device)

    def labels(self, prepared) -> np.ndarray:
        probabilities = self.backend.infer(prepared)
        return self.backend.to_input_grid(prepared.data, probabilities).argmax(axis=0).astype(np.uint8)

    def to_input_grid(self, prepared, maps: torch.Tensor) -> np.ndarray:
        return self.backend.to_input_grid(prepared.data, maps.float().cpu())

    def geometry(self, case, prepared):
        return prepared.geometry

    def network_affine(self, case, prepared) -> np.ndarray:
        """Network-input index (tensor order) -> physical LPS point: MONAI's affine after
        ``Orientationd``/``Spacingd`` (RAS), with the first two world axes flipped."""
        ras = np.asarray(prepared.data["image"].affine, dtype=float)
        return np.diag([-1.0, -1.0] + [1.0] * (ras.shape[0] - 2)) @ ras


class NnUNetSource:
    """An nnU-Net model folder (any trainer), through the prediction's backend.

    Every fold in ``folds`` (default: all with ``checkpoint_final.pth``) is explained and
    the maps are averaged, as the prediction averages the folds' logits. Volumes are read
    with the plans' reader, which must be ``SimpleITKIO`` (NIfTI, NRRD, MHA: its array
    order is the input file's (z, y, x), so the maps can be written with the input's
    geometry). A 2D configuration explains a volume slice by slice, as nnU-Net predicts it.

    Raises:
        ValueError: for an unusable model or another reader, naming it.
    """

    def __init__(self, model_dir, folds, device: torch.device, tta: bool = True):
        from medattn.inference.nnunet_backend import NNUNetBackend
        from medattn.nnunet.network import NnUNetEncoderAdapter

        self.backend = backend = NNUNetBackend(model_dir, folds, None, device, tta=tta)
        reader = backend.plans_manager.image_reader_writer_class.__name__
        if reader != "SimpleITKIO":
            raise ValueError(f"--model {model_dir}: the plans read images with {reader}; medattn explain writes maps "
                             "with the input's geometry for SimpleITKIO plans (NIfTI, NRRD, MHA) only")
        predictor = backend.predictor
        self.predictor, self.network = predictor, predictor.network.eval()
        patch = tuple(int(s) for s in backend.configuration_manager.patch_size)
        #: a 2D network on volumes: windows one slice deep, run without their depth axis
        self.slice_by_slice = len(patch) == 2
        self.roi = (1, *patch) if self.slice_by_slice else patch
        self.overlap = 1.0 - predictor.tile_step_size
        axes = predictor.allowed_mirroring_axes if tta and predictor.allowed_mirroring_axes else ()
        self.flips = [tuple(a + 2 for a in combo) for n in range(1, len(axes) + 1)
                      for combo in itertools.combinations(axes, n)]
        self.stages = [s.name for s in NnUNetEncoderAdapter().stages(self.network)]
        self.num_classes = len(backend.label_manager.all_labels)
        if backend.label_manager.has_regions:
            raise ValueError(f"--model {model_dir}: region-based models are not supported by medattn explain")
        self.num_channels = backend.num_channels
        self.description, self.device = backend.description, device
        if backend.previous_stage_name:
            raise ValueError(f"--model {model_dir}: a cascade stage model; explain its {backend.previous_stage_name} "
                             "stage instead")

    def weight_sets(self):
        for fold, parameters in zip(self.backend.folds, self.predictor.list_of_parameters):
            self.network.load_state_dict(parameters)
            yield fold

    def prepare(self, case):
        return self.backend.prepare(case)

    def network_input(self, prepared) -> torch.Tensor:
        return prepared.data[None].to(self.device)

    def labels(self, prepared) -> np.ndarray:
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        backend = self.backend
        logits = backend.infer(prepared)
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, backend.plans_manager, backend.configuration_manager, backend.label_manager, prepared.properties,
            num_threads_torch=torch.get_num_threads()))

    def to_input_grid(self, prepared, maps: torch.Tensor) -> np.ndarray:
        """(K, *preprocessed) maps -> (K, *input) on the input file's grid (see the module docstring)."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        plans, configuration = self.backend.plans_manager, self.backend.configuration_manager
        properties = prepared.properties
        cropped_shape = properties["shape_after_cropping_and_before_resampling"]
        input_spacing = [properties["spacing"][i] for i in plans.transpose_forward]
        current_spacing = (configuration.spacing if len(configuration.spacing) == len(cropped_shape)
                           else [input_spacing[0], *configuration.spacing])
        resampled = configuration.resampling_fn_probabilities(maps.float().cpu(), cropped_shape, current_spacing,
                                                              input_spacing)
        resampled = resampled.cpu().numpy() if isinstance(resampled, torch.Tensor) else np.asarray(resampled)
        full = np.zeros((maps.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
        full = insert_crop_into_image(full, resampled.astype(np.float32), properties["bbox_used_for_cropping"])
        return full.transpose([0] + [i + 1 for i in plans.transpose_backward])

    def geometry(self, case, prepared):
        from medattn.data.io import read_header

        return read_header(case.files[0])

    def network_affine(self, case, prepared) -> np.ndarray:
        """Network-input index (transposed order) -> physical LPS point, the way
        :meth:`to_input_grid` goes: resampling (voxel centres kept in place), the crop
        box's offset, ``transpose_backward``, then the input file's geometry."""
        properties = prepared.properties
        resampled = np.asarray(prepared.data.shape[1:], dtype=float)
        ndim = resampled.size
        scale = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=float) / resampled
        start = np.asarray([low for low, _ in properties["bbox_used_for_cropping"]], dtype=float)
        to_uncropped = np.eye(ndim + 1)
        to_uncropped[:ndim, :ndim] = np.diag(scale)
        to_uncropped[:ndim, ndim] = 0.5 * scale - 0.5 + start
        untranspose = np.eye(ndim + 1)
        untranspose[:ndim, :ndim] = 0
        for network_axis, input_axis in enumerate(self.backend.plans_manager.transpose_forward):
            untranspose[input_axis, network_axis] = 1
        return self.geometry(case, prepared).index_to_physical() @ untranspose @ to_uncropped
