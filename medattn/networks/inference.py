"""The MONAI bundle's predictor: ``medattn predict``'s MONAI backend with the bundle's arguments.

:class:`Predictor` is a thin adapter over the one MONAI prediction chain,
:class:`medattn.inference.monai_backend.MonaiBackend` (the checkpoint's own preprocessing,
``sliding_window_inference`` with Gaussian blending, ``Invertd`` back to the input grid),
and :meth:`Predictor.predict_folder` runs :func:`medattn.inference.predict`, so the bundle
gets the same case naming, atomic writes, resumption and error reporting as the command.

Input folder: one file per case (``case.nii.gz``) for single-channel networks, or nnU-Net
style channel files (``case_0000.nii.gz``, ``case_0001.nii.gz``); outputs are
``case.nii.gz`` in the output folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medattn.data.io import Geometry, case_name, image_suffix
from medattn.devices import resolve_device

__all__ = ["Predictor"]


class Predictor:
    """Predict label maps with a checkpoint written by :class:`medattn.networks.Trainer`.

    Args:
        checkpoint: path of ``checkpoint_best.pt`` / ``checkpoint_last.pt``.
        device: "auto", "cpu", "cuda", ...
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap (``medattn predict --step-size`` is ``1 - overlap``).
        progress: show a progress bar over cases.
        tta: mirroring test-time augmentation (``medattn predict``'s default; off here, as
            the bundle has always predicted).

    Example:
        >>> Predictor("runs/hippo/checkpoint_best.pt").predict_folder("imagesTs", "predictions")  # doctest: +SKIP
    """

    def __init__(self, checkpoint, device: str = "auto", sw_batch_size: int = 4, overlap: float = 0.5,
                 progress: bool = True, tta: bool = False):
        from medattn.inference.monai_backend import MonaiBackend

        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.step_size = 1.0 - overlap
        self.progress, self.tta = progress, tta
        self.backend = MonaiBackend(self.checkpoint, self.device, tta=tta, sw_batch_size=sw_batch_size,
                                    step_size=self.step_size)
        self.network, self.config = self.backend.network, self.backend.config
        self.transforms, self.preprocess = self.backend.transforms, self.backend.preprocess

    def predict_case(self, image_paths) -> tuple[np.ndarray, Geometry]:
        """Label map of one case on its own grid.

        Args:
            image_paths: one path per input channel.

        Returns:
            ``(labels, geometry)``: uint8 array in SimpleITK (z, y, x) order and the
            geometry of the first channel's file.
        """
        from medattn.inference.naming import Case

        files = tuple(Path(p) for p in image_paths)
        prepared = self.backend.prepare(Case(case_name(files[0]), files, image_suffix(files[0])))
        return self.to_input_grid(prepared.data, self.backend.infer(prepared)), prepared.geometry

    def to_input_grid(self, data: dict, probabilities: torch.Tensor) -> np.ndarray:
        """The argmax label map (uint8) on the input file's grid, in SimpleITK's (z, y, x) order,
        of class probabilities on the preprocessed grid (see ``MonaiBackend.to_input_grid``)."""
        return self.backend.to_input_grid(data, probabilities).argmax(axis=0).astype(np.uint8)

    def predict_folder(self, input_dir, output_dir) -> list[Path]:
        """Predict every case of ``input_dir`` into ``output_dir`` with :func:`medattn.inference.predict`.

        Returns:
            The written label maps, in case order.

        Raises:
            ValueError: if any case failed, listing them (the others are written).
        """
        from medattn.inference import predict

        report = predict(self.checkpoint, input_dir, output_dir, device=str(self.device), tta=self.tta,
                         step_size=self.step_size, progress=self.progress, overwrite=True)
        if report.failures:
            raise ValueError("; ".join(failure.message for failure in report.failures))
        return report.written

    def run(self, input_dir, output_dir) -> list[Path]:
        """Alias of :meth:`predict_folder` (the bundle's ``run`` entry point)."""
        return self.predict_folder(input_dir, output_dir)
