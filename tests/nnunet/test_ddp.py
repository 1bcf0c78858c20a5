"""nnU-Net's -num_gpus runs DDP, which fails when a parameter receives no gradient."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_two_process_ddp_steps_with_every_block_and_a_shared_dia_unit(tmp_path):
    report = tmp_path / "report.json"
    script = Path(__file__).with_name("ddp_step.py")
    result = subprocess.run(
        [sys.executable, str(script), str(report), str(tmp_path / "ddp_init")],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(report.read_text())
    # Gradients were all-reduced for every parameter, so both replicas stay identical.
    assert outcome["max_rank_difference"] == 0.0
