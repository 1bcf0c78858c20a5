"""The one-epoch demo run shared by the prediction and demo tests (run once per session).

``medattn demo --schedule smoke`` generates the phantom, plans it with nnU-Net, trains the
``_demo`` trainers for one epoch of two iterations, predicts, evaluates and takes the MONAI
path for one epoch: the trained models the prediction tests need, and the demo's own test.
"""

from __future__ import annotations

from pathlib import Path

_RUN: dict = {}


def smoke_demo(tmp_path_factory):
    """``(result, seconds)`` of the shared smoke demo run (:class:`medattn.pipelines.demo.DemoResult`)."""
    if "result" not in _RUN:
        import time

        from medattn.pipelines.demo import run_demo

        started = time.perf_counter()
        _RUN["result"] = run_demo(tmp_path_factory.mktemp("demo"), schedule="smoke", device="cpu", progress=False)
        _RUN["seconds"] = time.perf_counter() - started
    return _RUN["result"], _RUN["seconds"]


def model_dir(demo_out: Path, trainer: str = "nnUNetTrainerStock_demo") -> Path:
    from medattn.pipelines.demo import DATASET

    return demo_out / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"


def held_out_images(demo_out: Path) -> Path:
    from medattn.pipelines.demo import DATASET

    return demo_out / "nnUNet_raw" / DATASET / "imagesTs"
