"""Output files: CSV/JSON contents, a self-contained HTML page that renders in Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from medattn.evaluation.api import CSV_COLUMNS, evaluate_folders

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1200,1800", "--hide-scrollbars",
]


@pytest.fixture
def report(folders, tmp_path):
    gt_dir, pred_dir, other_dir = folders
    out = tmp_path / "out"
    result = evaluate_folders(pred_dir, gt_dir, compare=other_dir, convention="nnunet", out_dir=out, progress=False)
    return result, out


def test_metrics_csv_round_trips_the_table(report):
    result, out = report
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == list(CSV_COLUMNS)
    pd.testing.assert_frame_equal(table, result.metrics, check_dtype=False)
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["metric"]) == {"dice", "hd95", "assd"}


def test_summary_json_holds_settings_means_and_comparison(report):
    result, out = report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["convention"] == "nnunet" and summary["units"] == {"distance": "mm", "volume": "mm3"}
    assert summary["n_cases"] == 4 and summary["labels"] == {"1": "label_1", "2": "label_2", "3": "label_3"}
    assert summary["mean"]["dice"] == pytest.approx(result.mean["dice"])
    liver = summary["per_class"]["label_1"]
    assert liver["dice"]["mean"] == pytest.approx(result.metrics.query("label == 1")["dice"].mean())
    assert liver["dice"]["n"] + liver["dice"]["excluded"] == 4
    assert summary["compare"]["paired"][0]["metric"] == "dice"


def test_nan_is_written_as_null_in_json_and_nan_in_csv(folders, tmp_path):
    gt_dir, pred_dir, _ = folders
    out = tmp_path / "out"
    evaluate_folders(pred_dir, gt_dir, labels="1=a,2=b,3=c,9=absent", out_dir=out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_class"]["absent"]["dice"]["mean"] is None
    assert math.isnan(pd.read_csv(out / "metrics.csv").query("label == 9")["dice"].iloc[0])


def test_markdown_report_has_the_tables(report):
    result, out = report
    text = (out / "report.md").read_text()
    assert "## Paired comparison" in text and "| label_2 |" in text and "`strict`" in text
    mean_line = next(line for line in text.splitlines() if "mean over classes" in line)
    assert f"{result.mean['dice']:.4f}" in mean_line


def test_html_report_is_self_contained(report):
    _, out = report
    page = (out / "report.html").read_text()
    from medattn.evaluation.pictures import chosen_cases

    result = report[0]
    pictures = sum(len(chosen_cases(result.metrics, label)) for label in (1, 2, 3))
    assert pictures >= 3
    assert page.count("data:image/png;base64,") == 2 + pictures  # Dice and HD95 box plots, case pictures
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert references and all(ref.startswith("data:") for ref in references)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page


def render(html_path, tmp_path):
    """Screenshot ``html_path`` in headless Chromium; returns (pixels, console lines)."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    shot = tmp_path / f"{html_path.stem}.png"
    profile = tmp_path / f"profile-{html_path.stem}"
    process = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", html_path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), f"chromium wrote no screenshot (exit {process.returncode}):\n{process.stderr[-2000:]}"
    console = [line for line in process.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return np.asarray(Image.open(shot).convert("L"), dtype=float), console


def test_report_renders_in_chromium_without_console_errors(report, tmp_path):
    _, out = report
    pixels, console = render(out / "report.html", tmp_path)
    assert console == []
    assert pixels.std() > 20  # tables and plots, not a blank page
    # Every band of the page holds something: the plots did render below the tables.
    bands = np.array_split(pixels[: pixels.shape[0] // 4 * 4], 4)
    assert all(band.std() > 5 for band in bands)


def test_the_browser_check_sees_console_errors_and_blank_pages(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><p>x</p><script>console.error('boom'); missing();</script></body></html>")
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    _, console = render(broken, tmp_path)
    assert any("boom" in line for line in console) and any("Uncaught" in line for line in console)
    pixels, console = render(blank, tmp_path)
    assert console == [] and pixels.std() < 1
