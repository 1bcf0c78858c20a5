"""Explain a ``medattn train image`` checkpoint on whole images: attention maps and Grad-CAM.

Each image goes through the checkpoint's evaluation transforms (resize to the training
side, normalisation), one forward pass records every attached block's maps, and each map
is resized from its feature grid to the original image with bilinear interpolation, so
it lies on the picture's own pixel grid (a 2D NIfTI with spacing 1, origin 0 and the
identity direction: what SimpleITK reads from the PNG or JPEG).

Grad-CAM (``gradcam=CLASS``, a class index as in ``predictions.csv``'s columns):

- classification and multi-label: the standard Grad-CAM of the class's logit
  (Selvaraju et al., 2017), by default at the last ResNet stage (``layer4`` or
  ``layer3`` of a CIFAR ResNet), ``ReLU(Σ_k mean(∂y_c/∂A_k) · A_k)``;
- segmentation: the class's logit summed over the pixels predicted as the class, as for
  volumes; the default layer is again the last backbone stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageCase", "ImageExplainer"]


@dataclass(frozen=True)
class ImageCase:
    """One image to explain; ``files`` as for a volume case."""

    name: str
    files: tuple[Path, ...]


class ImageExplainer:
    """Attention maps (and Grad-CAM) of a ``medattn train image`` checkpoint.

    Args:
        checkpoint: the ``.pt`` file (EMA weights when it has them, as ``medattn predict``).
        device: a torch device.
        blocks: kinds or qualified names of the blocks to record (None: all).
        gradcam: a class index for Grad-CAM, or None.
        layer: qualified module name for Grad-CAM (default: the last ResNet stage).

    Raises:
        ValueError: for a checkpoint without blocks, an unknown layer or class, naming it.
    """

    def __init__(self, checkpoint, device: torch.device, blocks=None, gradcam: int | None = None,
                 layer: str | None = None):
        from medattn.explain.capture import AttentionRecorder
        from medattn.images.data import build_transforms
        from medattn.images.resnets import ResNetAdapter
        from medattn.images.training import load_image_checkpoint

        model, info = load_image_checkpoint(checkpoint)
        self.network, self.flips, self.device = model.to(device).eval(), [], device
        self.task, self.classes, self.info = info["model_config"]["task"], list(info["classes"]), info
        self.recorder = AttentionRecorder(self.network, blocks)
        backbone = getattr(model, "backbone", model)  # torchvision's segmentation models wrap the ResNet
        prefix = "backbone." if backbone is not model else ""
        self.stages = [prefix + stage.name for stage in ResNetAdapter().stages(backbone)]
        first = 1 if self.task == "segmentation" else 0  # segmentation's class 0 is the background
        if gradcam is not None and not first <= gradcam < len(self.classes):
            raise ValueError(f"--gradcam {gradcam}: the model's classes are {first}..{len(self.classes) - 1} "
                             f"({', '.join(self.classes[first:])})")
        self.gradcam = gradcam
        self.layer = self._layer(layer) if gradcam is not None else None
        norm = info["normalisation"]
        self.transform = build_transforms(self.task, False, info["settings"]["image_size"], norm["mean"], norm["std"])
        self.num_channels = int(info["channels"])
        self.description = (f"medattn train image {self.task} model {checkpoint} ({info['weights']} weights), "
                            f"{device}, classes {', '.join(self.classes)}")

    def _layer(self, name: str | None):
        modules = dict(self.network.named_modules())
        name = self.stages[-1] if name is None else name
        if name not in modules:
            raise ValueError(f"--layer {name!r}: no such module; the backbone stages are {self.stages}")
        self.layer_name = name
        return modules[name]

    def cases(self, inputs) -> tuple[list[ImageCase], list]:
        """One case per image file (folders listed, not recursively); names are the stems.

        Raises:
            FileNotFoundError: for an input that does not exist.
            ValueError: for a file that is not an image, or when nothing is found.
        """
        from medattn.images.data import IMAGE_SUFFIXES, _images_in

        files: list[Path] = []
        for item in inputs:
            path = Path(item)
            if path.is_dir():
                files += _images_in(path)
            elif path.is_file():
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise ValueError(f"--input {path}: not an image by its name ({', '.join(sorted(IMAGE_SUFFIXES))})")
                files.append(path)
            else:
                raise FileNotFoundError(f"--input {path}: no such file or folder")
        if not files:
            raise ValueError(f"--input {' '.join(map(str, inputs))}: no image found")
        names = [p.stem for p in files]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"--input: several images named {', '.join(duplicated)} (the output folders would clash)")
        return [ImageCase(p.stem, (p,)) for p in files], []

    def explain(self, case: ImageCase):
        """All maps of one image, on its pixel grid."""
        from medattn.data.io import Geometry
        from medattn.explain.volumes import CaseExplanation, _resize, _WindowMaps
        from medattn.images.data import ImageDataset, Sample
        from medattn.images.training import upsampled_prediction

        path = case.files[0]
        dataset = ImageDataset([Sample(path)], self.task, self.transform, self.num_channels, keep_full_mask=True)
        try:
            item = dataset[0]
        except Exception as err:  # PIL and the readers name no file
            raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from err
        x = item[0][None].to(self.device)
        pixels = _pixels(path, self.num_channels)
        size = pixels.shape
        window = _WindowMaps(self)
        with self.recorder:
            maps = window(x)
        maps = _resize(maps.float(), size)[0].cpu().numpy()
        spatial = {key: maps[i].astype(np.float32) for i, key in enumerate(window.keys)}
        channel = {key: np.mean(values, axis=0) for key, values in window.channel.items()}
        with torch.no_grad():
            output = self.network(x)
        notes = []
        if self.task == "segmentation":
            labels = upsampled_prediction(output["out"][0].float(), size).cpu().numpy().astype(np.uint8)
        else:
            labels = np.zeros(size, np.uint8)
            scores = output[0].float()
            scores = scores.sigmoid() if self.task == "multilabel" else scores.softmax(0)
            best = int(scores.argmax())
            notes.append(f"predicted {self.classes[best]} ({scores[best]:.3f})")
        notes += [f"{key}: zero everywhere (the class's score falls with every positive mix of the layer's channels; "
                  "try another --layer)" for key, value in spatial.items() if key.startswith("gradcam/") and
                  not value.any()]
        geometry = Geometry(shape=tuple(size), spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))
        return CaseExplanation(spatial, channel, labels, pixels, geometry, notes)


def _pixels(path: Path, channels: int) -> np.ndarray:
    """The picture in grey (the channels' mean), (H, W) float32."""
    from medattn.images.data import read_image

    return read_image(path, channels).astype(np.float32).mean(axis=-1)
