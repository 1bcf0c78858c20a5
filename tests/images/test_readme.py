"""The README's `medattn train image` commands, run as written on the sample datasets
(except the two that need VOC2012 on disk or torchrun, which test_distributed.py covers)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from medattn.cli import build_parser, main
from medattn.images import samples

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- commands:images -->\n```bash\n(.*?)\n```", text, flags=re.DOTALL).group(1)
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


def test_every_readme_command_parses():
    parser = build_parser()
    medattn = [argv for argv in _commands() if argv[0] == "medattn"]
    assert len(medattn) >= 9  # the VOC2012 line parses too
    for argv in medattn:
        assert getattr(parser.parse_args(argv[1:]), "handler", None) is not None, argv


@pytest.mark.slow
def test_the_readme_commands_run_on_the_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for argv in _commands():
        if argv[:3] == ["python", "-m", "medattn.images.samples"]:
            assert samples.main(argv[3:]) == 0
        elif argv[0] == "medattn" and "VOC2012/" not in argv:
            assert main([*argv[1:], "--device", "cpu", "--no-progress"]) == 0, argv
            ran += 1
    assert ran == 8
    assert os.path.isfile("pred/r20/metrics.json") and os.path.isfile("pred/voc_r20/metrics.json")
    assert os.path.isfile("runs/study/comparison.md")
