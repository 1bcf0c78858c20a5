"""Batch inference on NIfTI volumes (``medattn predict``).

    >>> from medattn.inference import predict
    >>> report = predict("nnUNet_results/Dataset990_Phantom/nnUNetTrainerDSM__nnUNetPlans__3d_fullres",
    ...                  "imagesTs", "predictions")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP

Modules:

- :mod:`medattn.inference.batch`: :func:`predict`, :func:`detect_model`, the batch pipeline.
- :mod:`medattn.inference.naming`: input files to cases, cases to output names.
- :mod:`medattn.inference.backend`: the backend interface and the input checks.
- :mod:`medattn.inference.nnunet_backend`: nnU-Net models through nnU-Net's predictor.
- :mod:`medattn.inference.monai_backend`: MONAI-path checkpoints (sliding window, mirroring TTA).
- :mod:`medattn.inference.cli`: ``medattn predict``.

Names are loaded on first use so that ``medattn --help`` does not import torch.
"""

from __future__ import annotations

from medattn._lazy import lazy_exports

_EXPORTS = {
    "predict": "medattn.inference.batch",
    "PredictionReport": "medattn.inference.batch",
    "CaseFailure": "medattn.inference.batch",
    "ModelSource": "medattn.inference.batch",
    "detect_model": "medattn.inference.batch",
    "load_backend": "medattn.inference.batch",
    "Case": "medattn.inference.naming",
    "collect_inputs": "medattn.inference.naming",
    "group_cases": "medattn.inference.naming",
    "CaseError": "medattn.inference.backend",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
