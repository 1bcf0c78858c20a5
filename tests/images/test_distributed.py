"""Two gloo processes under torchrun on CPU: identical parameters on both ranks, SyncBN for
segmentation, and 2-process validation metrics equal to one process's on the same checkpoint
(an odd validation set, so padded duplicates would show)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medattn.cli import main

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_process_training_matches_across_ranks_and_against_one_process(texture_folder, voc_folder, tmp_path):
    data = tmp_path / "textures"
    shutil.copytree(texture_folder, data)
    next((data / "val" / "grass").iterdir()).unlink()  # 35 validation images: shards of 18 and 17
    common = dict(device="cpu", progress=False, epochs=2)
    configs = [
        dict(task="classification", data=str(data), out=str(tmp_path / "cls"), preset="resnet20", batch_size=16,
             lr=0.05, ema_decay=0.9, **common),
        dict(task="segmentation", data=str(voc_folder), out=str(tmp_path / "seg"), backbone="resnet20",
             attention="dsm", batch_size=4, lr=0.02, image_size=48, **common),
    ]
    dump = tmp_path / "dump"
    dump.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(WORKER), json.dumps(configs), str(dump)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for index, (name, test_input, metric) in enumerate([("cls", data / "val", "accuracy"),
                                                        ("seg", voc_folder, "miou")]):
        ranks = [torch.load(dump / f"run{index}_rank{r}.pt", weights_only=True) for r in (0, 1)]
        for key, value in ranks[0]["state"].items():
            assert torch.equal(value, ranks[1]["state"][key]), (name, key)
        assert ranks[0]["summary"][metric] == ranks[1]["summary"][metric]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary[metric] == ranks[0]["summary"][metric]
        prediction = tmp_path / f"{name}_pred"
        assert main(["predict", "--model", str(tmp_path / name / "checkpoint_last.pt"), "--input", str(test_input),
                     "--output", str(prediction), "--device", "cpu", "--no-progress"]) == 0
        one_process = json.loads((prediction / "metrics.json").read_text())
        assert one_process[metric] == pytest.approx(summary[metric], abs=1e-9), (name, one_process, summary)
    config = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert config["train_config"]["task"] == "segmentation"
    assert not list(tmp_path.glob("*/.*tmp*"))  # rank 1 wrote nothing half-way
