"""medattn.safe_loading: a model file from someone else cannot run code when medattn reads it."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from medattn.safe_loading import UntrustedFileError, load_checkpoint, load_postprocessing_pickle

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling it creates ``marker`` (open(marker, "w")): a stand-in for os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainer", "x": _Payload(marker)},
               path)
    return path


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = _crafted_checkpoint(tmp_path / "checkpoint_final.pth", marker)
    with pytest.raises(UntrustedFileError, match=rf"{re.escape(str(path))}: refused: it names the global "
                                                 r"(io|builtins).open.*--trust-model"):
        load_checkpoint(path)
    assert not marker.exists()
    load_checkpoint(path, trust=True)  # the escape hatch really unpickles: the payload is real
    assert marker.exists()


def test_a_crafted_postprocessing_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "postprocessing.pkl"
    path.write_bytes(pickle.dumps(([_Payload(marker)], [{}])))
    with pytest.raises(UntrustedFileError, match=r"postprocessing.pkl: refused: it names the global (io|builtins).open"):
        load_postprocessing_pickle(path)
    assert not marker.exists()
    load_postprocessing_pickle(path, trust=True)
    assert marker.exists()


def test_nnunets_postprocessing_functions_and_plain_data_are_admitted(tmp_path):
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    import numpy as np

    path = tmp_path / "postprocessing.pkl"
    # nnUNetv2_find_best_configuration stores labels as numpy integers.
    steps = ([remove_all_but_largest_component_from_segmentation],
             [{"labels_or_regions": (1, [np.int64(2), 3])}])
    path.write_bytes(pickle.dumps(steps))
    assert load_postprocessing_pickle(path) == steps


def test_checkpoints_of_plain_data_and_nnunets_numpy_types_load(tmp_path):
    import numpy as np

    saved = {"network_weights": {"w": torch.ones(3)}, "logging": {"loss": [np.float64(0.5), np.float32(1.5)],
                                                                  "dtype": np.dtype("int16")},
             "init_args": {"fold": 0, "configuration": "3d_fullres"}}
    torch.save(saved, tmp_path / "ok.pth")
    loaded = load_checkpoint(tmp_path / "ok.pth")
    assert loaded["logging"]["loss"] == [0.5, 1.5] and torch.equal(loaded["network_weights"]["w"], torch.ones(3))


def test_unreadable_checkpoints_are_named(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable checkpoint|junk.pth: refused"):
        load_checkpoint(tmp_path / "junk.pth")


def test_no_unrestricted_unpickling_outside_the_trust_model_path():
    """Every torch.load in the package goes through weights_only=True, and every pickle
    through the restricted unpickler, except the lines of the explicit --trust-model path."""
    offenders = []
    for folder in ("medattn", "preprocess", "pipelines"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                risky = "weights_only=False" in line or re.search(r"\bpickle\.loads?\(", line) \
                    or re.search(r"torch\.load\((?![^)]*weights_only=True)", line)
                if risky and "# the explicit --trust-model path" not in line:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
