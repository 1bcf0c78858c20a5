"""``medattn bench vindr --quick``: the table's ratios are the quotients of its rates, and the
pixel comparison finds only the per-image stretch (small residual after an affine fit)."""

from __future__ import annotations

import re

from medattn.cli import main


def test_quick_bench_writes_the_throughput_table(tmp_path):
    out = tmp_path / "bench.md"
    assert main(["bench", "vindr", "--quick", "--size", "128", "--markdown", str(out),
                 "--workdir", str(tmp_path / "work")]) == 0
    text = out.read_text()
    rates = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"\| (.+?) \| [\d.]+ s \| ([\d.]+) \| ([\d.]+) \|",
                                                                   text)}
    notebook = rates["notebook loop (1 process)"][0]
    for name in ("medattn convert vindr-cxr -j 1", "medattn convert vindr-cxr -j 2"):
        rate, ratio = rates[name]
        assert abs(rate / notebook - ratio) < 0.02
    raw, fitted = (float(v) for v in re.search(r"mean \|difference\| ([\d.]+); after one affine fit per image "
                                              r"([\d.]+)", text).groups())
    assert raw > 1 and fitted < 1  # the notebooks' per-image min-max is the difference
    assert "load average" in text and "command: medattn bench vindr" in text
