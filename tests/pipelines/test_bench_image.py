"""``medattn bench image --quick``: the tables, ratios consistent with the times shown, the goal table."""

from __future__ import annotations

import re

import pytest

from medattn.cli import main


def test_quick_bench_writes_the_overhead_and_preset_tables(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", "image", "--quick", "--device", "cpu", "--markdown", str(out)]) == 0
    text = out.read_text()
    overhead = re.search(r"\| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) \|", text)
    trainer, bare, ratio = (float(v) for v in overhead.groups())
    assert abs(trainer / bare - ratio) < 0.01
    row = re.search(r"\| `sna_resnet20` \| `resnet20` \| 32² \| 16 \| \+0 \| ([\d.]+)× \| [\d.]+ ms vs [\d.]+ \| "
                    r"[\d.]+ \| ([\d.]+) ms vs ([\d.]+) \| ([\d.]+) \|", text)
    flops, ours, stock, ratio = (float(v) for v in row.groups())
    assert 1.0 < flops < 1.03  # SNA's only products: the small power iteration on the channel means
    assert abs(ratio / (ours / stock) - 1) < 0.15  # the median of per-round ratios vs the quotient of medians
    goal = re.search(r"\| SNA-ResNet-20 at 32², inference \(quick run\) \(`sna_resnet20`\) \| ≤ 1.02× \| ([\d.]+)× \| "
                     r"(pass|\*\*fail\*\*) \|", text)
    assert abs(float(goal.group(1)) - ratio) < 0.002 and (goal.group(2) == "pass") == (ratio <= 1.02)
    assert "| SNA adds no parameters (`sna_resnet20`) | 0 | +0 | pass |" in text
    assert "load average" in text


@pytest.mark.slow
def test_quick_bench_with_compile_adds_the_compiled_columns(tmp_path):
    out = tmp_path / "bench.md"
    assert main(["bench", "image", "--quick", "--skip-overhead", "--compile", "--device", "cpu", "--markdown",
                 str(out)]) == 0
    text = out.read_text()
    assert "| goal | limit | eager | pass | compiled | pass |" in text and "trainer epoch" not in text
    assert re.search(r"\| `sna_resnet20` .* \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    # the inference goal has a measured compiled ratio and its verdict, not a placeholder
    goal = next(line for line in text.splitlines() if line.startswith("| SNA-ResNet-20 at 32², inference"))
    assert re.fullmatch(r"\| .* \| ≤ 1\.02× \| [\d.]+× \| (pass|\*\*fail\*\*) \| [\d.]+× \| (pass|\*\*fail\*\*) \|", goal), goal
