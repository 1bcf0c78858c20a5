"""``medattn demo``: the README's user stories are the demo's commands, the demo's skip/rerun
logic, and (slow) the whole demo on a one-epoch schedule."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from medattn.cli import build_parser, main
from medattn.pipelines import demo
from tests.cli_help import help_text
from tests.inference.shared import held_out_images, smoke_demo

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_stories() -> dict[str, str]:
    text = README.read_text()
    return dict(re.findall(r"<!-- story:(\w+) -->\n```bash\n(.*?)\n```", text, flags=re.DOTALL))


def _commands(block: str) -> list[list[str]]:
    """Shell lines of a block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


def test_readme_stories_are_the_demo_commands():
    stories = _readme_stories()
    assert list(stories) == list(demo.STORIES), "every story once, in the demo's order"
    for name, block in stories.items():
        assert block == demo.render_story(name), f"README story {name!r} differs from pipelines/demo.py"


def test_readme_medattn_commands_parse():
    """Every medattn line of the stories is accepted by the real parser (flags cannot drift)."""
    parser = build_parser()
    count = 0
    for block in _readme_stories().values():
        for argv in _commands(block):
            if argv[0] == "medattn":
                args = parser.parse_args(argv[1:])
                assert getattr(args, "handler", None) is not None, argv
                count += 1
    assert count >= 6


def test_readme_start_commands_are_make_targets():
    start = README.read_text().split("## Start here", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    targets = [argv[1] for argv in _commands(start)]
    assert targets == ["demo", "test"]
    makefile = (README.parent / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


def test_steps_need_only_earlier_steps_and_stay_in_the_demo_folder():
    seen = set()
    for step in demo.story_steps():
        assert set(step.needs) <= seen, step.key
        seen.add(step.key)
        assert step.workdir.startswith(("$DEMO", "$nnUNet_")), step.key
        assert step.output.startswith(step.workdir), step.key


def test_help(capsys):
    text = help_text(capsys, "demo")
    assert "--out" in text and "demo_output" in text and "examples:" in text


def _fake_runs(monkeypatch, out: Path) -> list[str]:
    """Replace the commands by stand-ins that record the step and create its output."""
    folders = {"DEMO": str(out), "nnUNet_raw": str(out / "nnUNet_raw"),
               "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"), "nnUNet_results": str(out / "nnUNet_results")}
    calls: list[str] = []

    def run(step, *args):
        calls.append(step.key)
        output = Path(demo._expand(step.output, folders))
        if output.suffix:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text("x")
        else:
            output.mkdir(parents=True, exist_ok=True)
            (output / "case.nii.gz").write_text("x")

    monkeypatch.setattr(demo, "_run_subprocess", run)
    monkeypatch.setattr(demo, "_run_medattn", run)
    return calls


def test_second_run_skips_finished_steps_and_reruns_dependents(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    calls = _fake_runs(monkeypatch, out)
    keys = [step.key for step in demo.story_steps()]

    first = demo.run_demo(out, schedule="smoke", device="cpu", progress=False)
    assert calls == keys and list(first.ran) == keys and first.skipped == []

    calls.clear()
    second = demo.run_demo(out, schedule="smoke", device="cpu", progress=False)
    assert calls == [] and second.skipped == keys

    # a lost stamp reruns that step and everything that reads its outputs, nothing else
    (out / demo.STAMPS / "train_dsm.done").unlink()
    stale = out / "predictions" / "dsm" / "stale.nii.gz"
    stale.write_text("old")
    calls.clear()
    demo.run_demo(out, schedule="smoke", device="cpu", progress=False)
    assert calls == ["train_dsm", "predict_dsm", "evaluate", "explain"]
    assert not stale.exists(), "predictions of the old model must not be kept"

    # another schedule is another result: everything reruns
    calls.clear()
    demo.run_demo(out, schedule="demo", device="cpu", progress=False)
    assert calls == keys


def test_machine_options(tmp_path):
    folders = {"DEMO": str(tmp_path), "nnUNet_raw": "r", "nnUNet_preprocessed": "p",
               "nnUNet_results": str(tmp_path / "results")}
    steps = {step.key: step for step in demo.story_steps()}
    assert demo.machine_options(steps["plan"], "cpu", 2, folders) == ["-np", "2"]
    assert demo.machine_options(steps["train_stock"], "cuda", 2, folders) == []
    assert demo.machine_options(steps["train_stock"], "cpu", 2, folders) == ["-device", "cpu"]
    fold = Path(demo._expand(steps["train_stock"].workdir, folders))
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_text("x")
    assert demo.machine_options(steps["train_stock"], "cpu", 2, folders) == ["-device", "cpu", "--c"]
    assert demo.machine_options(steps["monai_train"], "cpu", 2, folders) == ["--device", "cpu"]
    assert demo.machine_options(steps["explain"], "cpu", 2, folders) == ["--device", "cpu"]
    assert demo.machine_options(steps["phantom"], "cpu", 2, folders) == []


@pytest.mark.slow
def test_smoke_demo_end_to_end(tmp_path_factory, capsys):
    """The whole demo with one-epoch trainings: reports, predictions on the input grids, reuse."""
    import SimpleITK as sitk

    result, seconds = smoke_demo(tmp_path_factory)
    print(f"smoke demo: {seconds:.0f} s")
    assert list(result.ran) == [step.key for step in demo.story_steps()]
    assert result.report.is_file() and result.monai_report.is_file()
    html = result.report.read_text()
    assert "<html" in html.lower() and "wilcoxon" in html.lower()
    assert html.count("data:image/png;base64,") >= 3  # a case picture per class, inline
    explained = result.out / "explain" / demo.EXPLAINED_CASE
    assert result.explain_index.is_file() and sorted(explained.glob("*__S.nii.gz"))
    explained_image = sitk.ReadImage(str(held_out_images(result.out) / f"{demo.EXPLAINED_CASE}_0000.nii.gz"))
    for path in explained.glob("*.nii.gz"):
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == explained_image.GetSize()
        assert written.GetOrigin() == pytest.approx(explained_image.GetOrigin(), abs=1e-4)
    images = sorted(held_out_images(result.out).glob("*_0000.nii.gz"))
    assert len(images) == 6
    for name in ("stock", "dsm", "monai_dsm"):
        for image_path in images:
            label = sitk.ReadImage(str(result.out / "predictions" / name / image_path.name.replace("_0000", "")))
            image = sitk.ReadImage(str(image_path))
            assert label.GetSize() == image.GetSize()
            assert label.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
            assert label.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-5)
    for step in demo.story_steps():
        if step.program.startswith("nnUNetv2"):
            assert (result.out / "logs" / f"{step.key}.log").is_file()

    capsys.readouterr()
    assert main(["demo", "--out", str(result.out), "--schedule", "smoke", "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already, skipped") == len(demo.story_steps())
    assert f"report: {result.report}" in printed
    assert f"explain index: {result.explain_index}" in printed
