"""MONAI-path checkpoints (``medattn train monai``): MONAI's sliding window, Gaussian blending,
mirroring TTA.

The checkpoint's own preprocessing (:func:`medattn.networks.transforms.inference_transforms`:
RAS orientation, resampling to the training spacing, intensity scheme) prepares the
image; ``monai.inferers.sliding_window_inference`` runs the network over windows of the
training ROI with overlap 0.5 and Gaussian importance weighting; with TTA every window is
also predicted mirrored along each combination of spatial axes (2^d - 1 flips) and the
logits are averaged, as nnU-Net does. Class probabilities are mapped back to the input's
grid with MONAI's ``Invertd`` (linear interpolation), then argmax-ed, and the label map is
written with the first input file's geometry.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medattn.data.io import Geometry, read_header, write_image
from medattn.inference.backend import CaseError, check_input_file, write_probabilities
from medattn.inference.naming import Case

__all__ = ["MonaiBackend", "MirroredNetwork", "find_monai_checkpoint"]

#: Checkpoint names of a ``medattn train monai`` output folder, in order of preference.
CHECKPOINT_NAMES = ("checkpoint_best.pt", "checkpoint_last.pt")


def find_monai_checkpoint(path: Path, checkpoint: str | None = None) -> Path | None:
    """The checkpoint file ``path`` designates: the file itself, or in a training output
    folder ``checkpoint`` (default: ``checkpoint_best.pt``, else ``checkpoint_last.pt``);
    None when there is none."""
    if path.is_file():
        return path
    for name in (checkpoint,) if checkpoint else CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    return None


class MirroredNetwork(torch.nn.Module):
    """``network`` averaged over its input mirrored along every combination of ``axes``.

    ``forward(x) = mean over subsets S of axes of flip_S(network(flip_S(x)))``, the empty
    subset included, so with 3 axes the network runs 8 times. Only the first output is
    used when the network returns several (deep supervision).

    Args:
        network: maps (B, C, *spatial) to (B, K, *spatial) logits.
        axes: spatial axes to mirror, counted from 0 (the first spatial axis).
    """

    def __init__(self, network: torch.nn.Module, axes: tuple[int, ...]):
        super().__init__()
        self.network = network
        self.flips = [tuple(a + 2 for a in combo) for n in range(1, len(axes) + 1)
                      for combo in itertools.combinations(axes, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = _first(self.network(x))
        for dims in self.flips:
            total = total + torch.flip(_first(self.network(torch.flip(x, dims))), dims)
        return total / (len(self.flips) + 1)


def _first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


@dataclass
class _Prepared:
    data: dict  # the preprocessing's output; data["image"] carries what Invertd undoes
    geometry: Geometry  # of the first input file


class MonaiBackend:
    """Predict with a checkpoint written by ``medattn train monai``.

    Args:
        checkpoint: the ``.pt`` file.
        device: where the network runs.
        tta: mirroring test-time augmentation over every spatial axis.
        sw_batch_size: windows per forward pass.
        step_size: sliding-window step as a fraction of the ROI; MONAI's overlap is
            ``1 - step_size``.

    Raises:
        ValueError: if the checkpoint cannot be read or rebuilt, naming it.
    """

    kind = "monai"

    def __init__(self, checkpoint: Path, device: torch.device, tta: bool = True, sw_batch_size: int = 2,
                 step_size: float = 0.5):
        from medattn.networks.training import load_checkpoint
        from medattn.networks.transforms import TransformConfig, inference_transforms

        network, config = load_checkpoint(checkpoint)
        self.config = config
        self.transforms = TransformConfig.from_dict(config["transforms"])
        self.preprocess = inference_transforms(self.transforms)
        self.num_channels = int(config["network"]["in_channels"])
        self.num_classes = int(config["network"]["out_channels"])
        self.device = device
        self.sw_batch_size = sw_batch_size
        self.overlap = 1.0 - step_size
        axes = tuple(range(self.transforms.spatial_dims)) if tta else ()
        self.network = (MirroredNetwork(network, axes) if axes else network).to(device).eval()
        self.description = (
            f"MONAI {config['network']['name']} (attention {config['network'].get('attention') or 'none'}) "
            f"from {checkpoint}, {device}, TTA mirroring axes {axes or 'none'}, step size {step_size}"
        )

    def prepare(self, case: Case) -> _Prepared:
        """Read, check and preprocess the case with the checkpoint's transforms."""

        for path in case.files:
            check_input_file(path, self.transforms.spatial_dims)
        try:
            data = self.preprocess({"image": [str(p) for p in case.files]})
        except Exception as err:  # MONAI wraps reader errors in RuntimeError("applying transform ...")
            raise CaseError(f"{', '.join(map(str, case.files))}: cannot preprocess ({_root_cause(err)})") from err
        if data["image"].shape[0] != self.num_channels:
            raise CaseError(f"{', '.join(map(str, case.files))}: wrong channel count: {data['image'].shape[0]} "
                            f"channel(s), the model needs {self.num_channels}")
        return _Prepared(data, read_header(case.files[0]))

    @torch.inference_mode()
    def infer(self, prepared: _Prepared) -> torch.Tensor:
        """Class probabilities (K, *spatial) on the preprocessed grid, on the CPU."""
        from monai.inferers import sliding_window_inference

        image = prepared.data["image"].as_tensor()[None].to(self.device)
        logits = sliding_window_inference(
            image, self.transforms.roi, self.sw_batch_size, self.network, overlap=self.overlap, mode="gaussian",
        )
        return torch.softmax(logits[0].float(), dim=0).cpu()

    def to_input_grid(self, data: dict, probabilities: torch.Tensor) -> np.ndarray:
        """Class probabilities on the preprocessed grid, mapped back to the input file's grid.

        Args:
            data: the preprocessing's output for the case (its ``"image"`` carries the
                applied operations that MONAI's ``Invertd`` undoes).
            probabilities: (K, *spatial) on the preprocessed grid.

        Returns:
            (K, *spatial) in SimpleITK's (z, y, x) order of the input file. Probabilities are
            resampled with linear interpolation, then argmax-ed by the caller: smoother
            boundaries than resampling the label map with nearest neighbour.
        """
        from monai.transforms import Invertd

        data = dict(data)
        data["pred"] = data["image"].clone().set_array(probabilities)
        inverted = Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(data)
        array = torch.as_tensor(inverted["pred"]).numpy()
        # MONAI's (K, x, y[, z]) -> SimpleITK's (K, [z,] y, x)
        return np.ascontiguousarray(array.transpose(0, *range(array.ndim - 1, 0, -1)))

    def export(self, case: Case, prepared: _Prepared, probabilities: torch.Tensor, output_dir: Path,
               save_probabilities: bool) -> None:
        """Probabilities back to the input grid (``Invertd``), argmax, atomic writes."""
        on_input_grid = self.to_input_grid(prepared.data, probabilities)
        if tuple(on_input_grid.shape[1:]) != tuple(prepared.geometry.shape):
            raise CaseError(f"{case.files[0]}: internal error: prediction shape {on_input_grid.shape[1:]} "
                            f"differs from the input's {prepared.geometry.shape}")
        labels = on_input_grid.argmax(axis=0).astype(np.uint8 if self.num_classes <= 256 else np.uint16)
        if save_probabilities:
            write_probabilities(case, output_dir, on_input_grid.astype(np.float32),
                                {"geometry": asdict(prepared.geometry), "files": [str(p) for p in case.files]})
        write_image(labels, prepared.geometry, case.label_path(output_dir))


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"
