"""Explain a volume model on whole volumes: attention maps and Grad-CAM, aligned with the input.

For each case, the model's own preprocessing runs (the prediction backend's ``prepare``, see
:mod:`medattn.explain.sources`: MONAI transforms or nnU-Net's preprocessor), then MONAI's
``sliding_window_inference`` with the prediction's window (patch) size, Gaussian weights
(σ = window/8, nnU-Net's and MONAI's value) and step fraction, on a window function that
runs the network once per window (and once per mirrored copy with TTA, each map flipped
back before averaging), reads the recorded maps
(:class:`~medattn.explain.capture.AttentionRecorder`), upsamples each from its feature grid
to the window (trilinear, or bilinear in 2D) and returns them as channels. So the maps are
stitched across windows as the class probabilities are. The source then takes them back to
the input file's grid the way its prediction goes (``Invertd``, or nnU-Net's probability
resampling, un-cropping and transposition). An nnU-Net model's folds are explained in turn
and averaged, as its logits are; a 2D nnU-Net configuration runs slice by slice.

Grad-CAM (``gradcam=CLASS``): in each window, the gradient of the summed logit of CLASS
over the voxels predicted as CLASS, at the output of ``layer`` (default: the deepest
encoder stage above the bottleneck); the map is ``ReLU(Σ_k mean(∂y/∂A_k) · A_k)``, stitched like the others.
A window without CLASS contributes zero.

Channel weights (SE, ECA, DSM's C, CBAM's channel gate, DIA's hₜ) are averaged over the
windows of a case.

Stage grids (``stage_grids=True``): each map is also given on its block's own feature grid,
placed in physical space. The stitched map on the network's input grid is averaged over
blocks of the stage's stride (the window size over the feature size, per axis), and the
grid's voxel k lies where the network-input voxels ``k·stride … k·stride + stride − 1``
lie (their centre), through the source's ``network_affine``. Decision: these volumes keep
the network's orientation and spacing (RAS-resampled for MONAI, the plans' spacing and
transposition for nnU-Net) rather than the input's, so a viewer shows the stage's voxels
as the network saw them, aligned with the input in physical space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["CaseExplanation", "VolumeExplainer"]


@dataclass
class CaseExplanation:
    """The maps of one case on the input grid.

    Attributes:
        spatial: ``"block/map"`` -> (z, y, x) float32 array on the input file's grid.
        channel: ``"block/map"`` -> (C,) mean channel weights.
        labels: the predicted label map on the input grid.
        image: the first input channel on its grid.
        geometry: the input file's geometry.
        stage_grids: ``"block/map"`` -> (array, geometry) on the block's feature grid, when
            asked for (maps computed at the network's input resolution are not repeated).
    """

    spatial: dict[str, np.ndarray]
    channel: dict[str, np.ndarray]
    labels: np.ndarray
    image: np.ndarray
    geometry: object
    notes: list[str] = field(default_factory=list)
    stage_grids: dict[str, tuple[np.ndarray, object]] = field(default_factory=dict)


class VolumeExplainer:
    """Attention maps (and Grad-CAM) of a volume model, on whole volumes.

    Args:
        source: the model (:func:`medattn.explain.sources.open_source`: a MONAI checkpoint
            or an nnU-Net model folder), or a path, opened with ``device`` and ``tta``.
        device: a torch device (when ``source`` is a path).
        blocks: kinds or qualified names of the blocks to record (None: all).
        tta: mirror as ``medattn predict`` does, for the prediction and for the maps.
        gradcam: a class value for Grad-CAM, or None.
        layer: qualified module name for Grad-CAM (default: the deepest encoder stage
            above the bottleneck).
        stage_grids: also give each map on its block's own feature grid.

    Raises:
        ValueError: for a model without blocks to explain, an unknown layer or a class
            the network does not predict, naming it.
    """

    def __init__(self, source, device=None, blocks=None, tta: bool = True, gradcam: int | None = None,
                 layer: str | None = None, stage_grids: bool = False):
        from medattn.explain.capture import AttentionRecorder
        from medattn.explain.sources import open_source

        self.source = open_source(source, device, tta) if not hasattr(source, "weight_sets") else source
        self.network, self.flips = self.source.network, self.source.flips
        self.description, self.num_channels = self.source.description, self.source.num_channels
        self.recorder = AttentionRecorder(self.network, blocks)
        self.gradcam, self.stage_grids = gradcam, stage_grids
        classes = self.source.num_classes
        if gradcam is not None and not 0 < gradcam < classes:
            raise ValueError(f"--gradcam {gradcam}: the network predicts classes 1..{classes - 1}")
        self.layer = self._layer(layer) if gradcam is not None else None

    def _layer(self, name: str | None):
        stages = self.source.stages
        modules = dict(self.network.named_modules())
        if name is None:
            # The deepest stage above the bottleneck: the bottleneck's grid is a few voxels
            # wide, and there the class score often falls with every positive channel mix
            # (Grad-CAM's ReLU then leaves nothing).
            name = stages[-2] if len(stages) > 1 else stages[-1]
        if name not in modules:
            raise ValueError(f"--layer {name!r}: no such module; the encoder stages are {stages}")
        self.layer_name = name
        return modules[name]

    def cases(self, inputs):
        """``(cases, problems)`` of the input files or folders (nnU-Net's channel naming)."""
        from medattn.inference.naming import collect_inputs, group_cases

        return group_cases(collect_inputs(inputs), self.num_channels)

    def explain(self, case) -> CaseExplanation:
        """All maps of one case (an :class:`medattn.inference.naming.Case`)."""
        from monai.inferers import sliding_window_inference

        from medattn.data.io import read_image

        source = self.source
        prepared = source.prepare(case)
        labels = source.labels(prepared)
        image = source.network_input(prepared)
        window = _WindowMaps(self, squeeze_depth=getattr(source, "slice_by_slice", False))
        stitched, sets = None, 0
        with self.recorder:
            for _ in source.weight_sets():  # the folds of an nnU-Net model, averaged as the prediction does
                maps = sliding_window_inference(image, source.roi, 1, window, overlap=source.overlap, mode="gaussian")
                stitched = maps if stitched is None else stitched + maps
                sets += 1
        stitched = stitched[0] / sets
        spatial_on_input = source.to_input_grid(prepared, stitched)
        geometry = source.geometry(case, prepared)
        shape = tuple(geometry.shape)
        if tuple(spatial_on_input.shape[1:]) != shape or tuple(labels.shape) != shape:
            raise ValueError(f"{case.files[0]}: internal error: maps of shape {spatial_on_input.shape[1:]} and "
                             f"labels of {labels.shape} on an input of {shape}")
        spatial = {key: spatial_on_input[i].astype(np.float32) for i, key in enumerate(window.keys)}
        channel = {key: np.mean(values, axis=0) for key, values in window.channel.items()}
        notes = [f"{key}: zero everywhere (no window predicts the class, or its score falls with every positive "
                 "mix of the layer's channels; try another --layer)" for key, value in spatial.items()
                 if key.startswith("gradcam/") and not value.any()]
        grids = _stage_grids(stitched, window, source.network_affine(case, prepared)) if self.stage_grids else {}
        return CaseExplanation(spatial, channel, labels, read_image(case.files[0])[0], geometry, notes, grids)


def _stage_grids(stitched: torch.Tensor, window: "_WindowMaps", network_affine: np.ndarray) -> dict:
    """Each map with a stride above 1, pooled onto its feature grid, with that grid's geometry."""
    from medattn.data.io import Geometry

    grids = {}
    pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}
    for index, key in enumerate(window.keys):
        stride = window.strides[key]
        if all(s == 1 for s in stride):
            continue
        values = pool[len(stride)](stitched[None, index:index + 1].float(), stride, stride, ceil_mode=True)[0, 0]
        to_network = np.eye(len(stride) + 1)
        to_network[:-1, :-1] = np.diag(stride)
        to_network[:-1, -1] = (np.asarray(stride) - 1) / 2
        geometry = Geometry.from_index_to_physical(values.shape, network_affine @ to_network)
        grids[key] = (values.cpu().numpy().astype(np.float32), geometry)
    return grids


class _WindowMaps:
    """The window function of the sliding window: maps as channels, channel weights kept."""

    def __init__(self, explainer, squeeze_depth: bool = False):
        self.explainer = explainer
        #: a 2D network on one-slice-deep windows of a volume (nnU-Net's 2d configuration)
        self.squeeze_depth = squeeze_depth
        self.keys: list[str] | None = None
        self.channel: dict[str, list[np.ndarray]] = {}
        #: ``"block/map"`` -> window size over feature size, per axis of the network input
        self.strides: dict[str, tuple[int, ...]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.squeeze_depth:
            return self._mirrored(x[:, :, 0])[:, :, None]
        return self._mirrored(x)

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        flips = [()] + list(self.explainer.flips)
        total = None
        for dims in flips:
            maps = self._maps(torch.flip(x, dims) if dims else x)
            maps = torch.flip(maps, dims) if dims else maps
            total = maps if total is None else total + maps
        return total / len(flips)

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        explainer = self.explainer
        explainer.recorder.clear()
        cam = _grad_cam(explainer, x) if explainer.gradcam is not None else None
        if cam is None:
            with torch.no_grad():
                explainer.network(x)
        found = {}
        for name, record in explainer.recorder.records.items():
            for key, value in record.spatial.items():
                self._keep_stride(f"{name}/{key}", value, x)
                found[f"{name}/{key}"] = _resize(value.float(), x.shape[2:])
            for key, value in record.channel.items():
                self.channel.setdefault(f"{name}/{key}", []).append(value.float().mean(0).cpu().numpy())
        if cam is not None:
            key = f"gradcam/{explainer.layer_name}/class_{explainer.gradcam}"
            self._keep_stride(key, cam, x)
            found[key] = _resize(cam, x.shape[2:])
        if self.keys is None:
            self.keys = sorted(found)
        if sorted(found) != self.keys:
            raise ValueError(f"the recorded maps changed between windows: {sorted(found)} vs {self.keys}")
        return torch.cat([found[k] for k in self.keys], dim=1)

    def _keep_stride(self, key: str, value: torch.Tensor, x: torch.Tensor) -> None:
        stride = tuple(max(1, round(w / f)) for w, f in zip(x.shape[2:], value.shape[2:]))
        self.strides[key] = (1, *stride) if self.squeeze_depth else stride


def _resize(value: torch.Tensor, size) -> torch.Tensor:
    mode = "trilinear" if len(size) == 3 else "bilinear"
    if tuple(value.shape[2:]) == tuple(size):
        return value
    return torch.nn.functional.interpolate(value, size=tuple(size), mode=mode, align_corners=False)


def _grad_cam(explainer: VolumeExplainer, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of one window: ReLU(Σ_k mean(∂S/∂A_k) A_k), S = the class's summed logit over
    the voxels predicted as the class (zero where the window predicts none), or the class's
    logit for a classifier."""
    saved = {}

    def keep(module, args, output):
        output = output[0] if isinstance(output, (list, tuple)) else output
        output.retain_grad()
        saved["activation"] = output

    handle = explainer.layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = explainer.network(x)
            logits = logits["out"] if isinstance(logits, dict) else logits  # torchvision's segmentation models
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            activation = saved["activation"]
            if logits.ndim == 2:  # classification: the standard Grad-CAM of the class's logit
                score = logits[:, explainer.gradcam].sum()
            else:
                if logits.ndim == x.ndim + 1:  # DynUNet's stacked deep-supervision heads in training mode
                    logits = logits[:, 0]
                region = logits.argmax(dim=1) == explainer.gradcam
                if not region.any():
                    return torch.zeros((x.shape[0], 1, *activation.shape[2:]), device=x.device)
                score = (logits[:, explainer.gradcam] * region).sum()
            score.backward()
        weights = activation.grad.mean(dim=tuple(range(2, activation.ndim)), keepdim=True)
        return torch.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    finally:
        handle.remove()
        explainer.network.zero_grad(set_to_none=True)
