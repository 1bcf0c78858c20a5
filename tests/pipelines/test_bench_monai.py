"""``medattn bench monai`` on a generated phantom: a tiny end-to-end run whose table is
checked against the checkpoints it trained and against MONAI's own Dice metric."""

from __future__ import annotations

import re

import pytest

from medattn.cli import main
from tests.cli_help import help_text


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medattn.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("raw"), n_cases=5, shape=(16, 24, 24), dataset_id=991)


def test_help_lists_the_options(capsys):
    text = help_text(capsys, "bench", "monai")
    for option in ("--data", "--attention", "--epochs", "--timing-steps", "--markdown"):
        assert option in text


def test_not_a_dataset_folder_is_refused(tmp_path, capsys):
    assert main(["bench", "monai", "--data", str(tmp_path), "--work", str(tmp_path / "work")]) == 2
    assert "no dataset.json" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_run_reports_what_it_trained(phantom, tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    from medattn.networks.training import read_checkpoint

    work, markdown = tmp_path / "work", tmp_path / "table.md"
    code = main(["bench", "monai", "--data", str(phantom), "--work", str(work), "--attention", "dsm", "sna",
                 "--epochs", "1", "--limit-cases", "5", "--filters", "8,16,32", "--roi", "16,16,16",
                 "--batch-size", "1", "--samples-per-case", "1", "--timing-steps", "1", "--device", "cpu",
                 "--markdown", str(markdown)])
    assert code == 0
    text = markdown.read_text()
    assert text.strip() in capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    names = ["organ_a", "organ_b", "organ_c"]
    assert [f"Dice {n}" for n in names] == re.findall(r"Dice organ_\w", header)
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")
            for line in text.splitlines() if re.match(r"\| (plain|dsm|sna) \|", line)}
    assert list(rows) == ["plain", "dsm", "sna"]

    for variant, cells in rows.items():
        state = read_checkpoint(work / "runs" / variant / "checkpoint_last.pt")["state_dict"]
        assert int(cells[1].replace(",", "")) == sum(
            v.numel() for k, v in state.items() if not k.startswith("skip_layers."))
        # Dice columns against MONAI's DiceMetric on the written predictions (nan where a
        # class is absent from both, as nnU-Net's convention and the table give it).
        predictions = sorted((work / "predictions" / variant).glob("*.nii.gz"))
        assert predictions, variant
        for index in range(len(names)):
            expected = []
            for path in predictions:
                pred = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                gt = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "ground_truth" / path.name)))
                if not ((pred == index + 1).any() or (gt == index + 1).any()):
                    continue
                as_tensor = [one_hot(torch.from_numpy(a.astype(np.int64))[None, None], 4) for a in (pred, gt)]
                expected.append(DiceMetric(include_background=True, ignore_empty=False)(*as_tensor)[0, index + 1].item())
            reported = float(cells[2 + index])
            if expected:
                assert reported == pytest.approx(np.mean(expected), abs=6e-5), (variant, names[index])
            else:
                assert np.isnan(reported)
        assert cells[-1].strip() == "" if variant == "plain" else "organ_a" in cells[-1]
    assert float(rows["plain"][-3]) == 1.0  # step time ratio of the reference
    assert int(rows["sna"][1].replace(",", "")) == int(rows["plain"][1].replace(",", ""))  # SNA is parameter-free
    assert int(rows["dsm"][1].replace(",", "")) > int(rows["plain"][1].replace(",", ""))


def test_steps_only_times_every_variant_against_plain_with_the_goal(tmp_path, capsys):
    markdown = tmp_path / "steps.md"
    code = main(["bench", "monai", "--steps-only", "--attention", "dsm", "sna", "--filters", "8,16,32",
                 "--roi", "16,16,16", "--batch-size", "1", "--samples-per-case", "1", "--timing-steps", "1",
                 "--device", "cpu", "--data", str(tmp_path / "never_read"), "--markdown", str(markdown)])
    assert code == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| variant")]
    assert [r[0] for r in rows] == ["plain", "dsm", "sna"]
    for name, seconds, ratio, verdict, _, memory in rows:
        plain = float(rows[0][1])
        assert float(ratio) == pytest.approx(float(seconds) / plain, rel=0.05)  # seconds are printed rounded
        assert verdict == ("pass" if float(ratio) <= 1.15 else "fail")
    assert float(rows[1][5]) > 1  # DSM's maps cost memory on top of plain's
