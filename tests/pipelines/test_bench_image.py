"""``medattn bench image --quick``: both tables, ratios that are the quotients of the times shown."""

from __future__ import annotations

import re

from medattn.cli import main


def test_quick_bench_writes_the_overhead_and_preset_tables(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", "image", "--quick", "--device", "cpu", "--markdown", str(out)]) == 0
    text = out.read_text()
    overhead = re.search(r"\| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) \|", text)
    trainer, bare, ratio = (float(v) for v in overhead.groups())
    assert abs(trainer / bare - ratio) < 0.01
    row = re.search(r"\| `sna_resnet20` \| `resnet20` \| 32² \| 16 \| \+0 \| ([\d.]+) ms vs ([\d.]+) \| ([\d.]+) \|", text)
    ours, stock, ratio = (float(v) for v in row.groups())
    assert abs(ours / stock - ratio) < 0.02
    assert "load average" in text
