"""Sliding-window prediction with a MONAI-path checkpoint (what the bundle's inference runs).

:class:`Predictor` loads a checkpoint with :func:`medattn.networks.load_checkpoint`, applies
the checkpoint's own preprocessing (orientation, spacing, intensity), runs
``sliding_window_inference`` with the training ROI, maps the class probabilities back to
the input grid with MONAI's ``Invertd`` and writes label maps with the input image's
geometry (``medattn.data.io.write_image``, atomic).

Input folder: one file per case (``case.nii.gz``) for single-channel networks, or nnU-Net
style channel files (``case_0000.nii.gz``, ``case_0001.nii.gz``); outputs are
``case.nii.gz`` in the output folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from medattn.data.io import Geometry, case_name, list_images, read_header, write_image
from medattn.networks.training import load_checkpoint, resolve_device
from medattn.networks.transforms import TransformConfig, inference_transforms

__all__ = ["Predictor", "group_cases"]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def group_cases(folder: str | Path, in_channels: int) -> dict[str, list[Path]]:
    """Image files of ``folder`` grouped by case, channels in order.

    Files named ``{case}_{0000..}`` are channels of one case (nnU-Net convention); any other
    image file is a single-channel case.

    Raises:
        FileNotFoundError: if ``folder`` is missing.
        ValueError: if the folder has no image, or a case has the wrong number of channels
            (naming the case and the files found).
    """
    cases: dict[str, dict[int, Path]] = {}
    for path in list_images(folder):
        match = _CHANNEL_SUFFIX.match(case_name(path))
        case, channel = (match["case"], int(match["channel"])) if match else (case_name(path), 0)
        cases.setdefault(case, {})[channel] = path
    if not cases:
        raise ValueError(f"{folder}: no image files (.nii.gz, .nii, .nrrd, .mha) found")
    grouped = {}
    for case, channels in sorted(cases.items()):
        if sorted(channels) != list(range(in_channels)):
            raise ValueError(
                f"case {case!r} in {folder}: the network needs channels 0..{in_channels - 1}, found "
                f"{[p.name for _, p in sorted(channels.items())]}"
            )
        grouped[case] = [channels[c] for c in range(in_channels)]
    return grouped


class Predictor:
    """Predict label maps with a checkpoint written by :class:`medattn.networks.Trainer`.

    Args:
        checkpoint: path of ``checkpoint_best.pt`` / ``checkpoint_last.pt``.
        device: "auto", "cpu", "cuda", ...
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap.
        progress: show a tqdm bar over cases.

    Example:
        >>> Predictor("runs/hippo/checkpoint_best.pt").predict_folder("imagesTs", "predictions")  # doctest: +SKIP
    """

    def __init__(self, checkpoint, device: str = "auto", sw_batch_size: int = 4, overlap: float = 0.5,
                 progress: bool = True):
        self.device = resolve_device(device)
        self.network, self.config = load_checkpoint(checkpoint)
        self.network.to(self.device)
        self.transforms = TransformConfig.from_dict(self.config["transforms"])
        self.preprocess = inference_transforms(self.transforms)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.progress = progress

    @torch.no_grad()
    def predict_case(self, image_paths) -> tuple[np.ndarray, Geometry]:
        """Label map of one case on its own grid.

        Args:
            image_paths: one path per input channel.

        Returns:
            ``(labels, geometry)``: uint8 array in SimpleITK (z, y, x) order and the
            geometry of the first channel's file.
        """
        from monai.inferers import sliding_window_inference

        paths = [str(p) for p in image_paths]
        data = self.preprocess({"image": paths})
        logits = sliding_window_inference(
            data["image"][None].to(self.device), self.transforms.roi, self.sw_batch_size, self.network,
            overlap=self.overlap, mode="gaussian",
        )
        probabilities = torch.softmax(logits[0].float(), dim=0).cpu()
        return self.to_input_grid(data, probabilities), read_header(paths[0])

    def to_input_grid(self, data: dict, probabilities: torch.Tensor) -> np.ndarray:
        """Map class probabilities on the preprocessed grid back to the input file's grid.

        Args:
            data: the output of the preprocessing for this case (its ``"image"`` carries the
                applied operations that ``Invertd`` undoes).
            probabilities: (C, *spatial) on the preprocessed grid.

        Returns:
            The argmax label map (uint8) in SimpleITK's (z, y, x) order of the input file.
        """
        from monai.transforms import Invertd

        data = dict(data)
        data["pred"] = data["image"].clone().set_array(probabilities)
        # Probabilities are resampled with linear interpolation, then argmax-ed: smoother
        # boundaries than resampling the label map with nearest neighbour.
        inverted = Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(data)
        labels = torch.as_tensor(inverted["pred"]).argmax(dim=0).numpy().astype(np.uint8)
        return np.ascontiguousarray(labels.T)  # MONAI's (x, y, z) -> SimpleITK's (z, y, x)

    def predict_folder(self, input_dir, output_dir, suffix: str = ".nii.gz") -> list[Path]:
        """Predict every case of ``input_dir`` into ``output_dir/{case}{suffix}``.

        Returns:
            The written files, in case order.
        """
        from tqdm.auto import tqdm

        cases = group_cases(input_dir, self.config["network"]["in_channels"])
        written = []
        for case, paths in tqdm(cases.items(), desc="predicting", unit="case", disable=not self.progress):
            labels, geometry = self.predict_case(paths)
            written.append(write_image(labels, geometry, Path(output_dir) / f"{case}{suffix}"))
        return written

    def run(self, input_dir, output_dir) -> list[Path]:
        """Alias of :meth:`predict_folder` (the bundle's ``run`` entry point)."""
        return self.predict_folder(input_dir, output_dir)
