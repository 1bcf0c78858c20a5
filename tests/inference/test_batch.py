"""The batch pipeline with a stand-in backend: every case ends written or reported, in any
step and with any number of worker threads (no model needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from medattn.inference.backend import CaseError
from medattn.inference.batch import CaseFailure, PredictionReport, _Pipeline, _this_part
from medattn.inference.naming import Case, GroupingProblem


class FakeBackend:
    """Writes ``{case}.txt``; fails the cases named in ``fail`` at the step given there."""

    num_channels = 1
    description = "fake"

    def __init__(self, fail: dict[str, str]):
        self.fail = fail
        self.infer_threads: set[str] = set()
        self.lock = threading.Lock()

    def _maybe_fail(self, case_name: str, step: str):
        if self.fail.get(case_name) == step:
            raise CaseError(f"{case_name}_0000.nii.gz: broken in {step}")

    def prepare(self, case):
        time.sleep(0.01)
        self._maybe_fail(case.name, "prepare")
        return case.name

    def infer(self, prepared):
        with self.lock:
            self.infer_threads.add(threading.current_thread().name)
        if self.fail.get(prepared) == "infer":
            raise RuntimeError("device out of memory")
        return prepared.upper()

    def export(self, case, prepared, result, output_dir: Path, save_probabilities):
        time.sleep(0.01)
        self._maybe_fail(case.name, "export")
        (output_dir / f"{case.name}.txt").write_text(result)


@pytest.mark.parametrize("jobs", [1, 3])
def test_every_case_is_written_or_reported(tmp_path, jobs):
    cases = [Case(f"c{i:02d}", (tmp_path / f"c{i:02d}_0000.nii.gz",), ".nii.gz") for i in range(12)]
    backend = FakeBackend({"c02": "prepare", "c05": "infer", "c09": "export"})
    report = PredictionReport()
    _Pipeline(backend, tmp_path, False, jobs, progress=False).run(cases, report)

    assert sorted(p.name for p in report.written) == [f"c{i:02d}.nii.gz" for i in range(12) if i not in (2, 5, 9)]
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == [f"c{i:02d}.txt" for i in range(12) if i not in (2, 5, 9)]
    assert (tmp_path / "c03.txt").read_text() == "C03"
    failures = {f.case: f.message for f in report.failures}
    assert failures.keys() == {"c02", "c05", "c09"}
    assert "broken in prepare" in failures["c02"] and "broken in export" in failures["c09"]
    # an unexpected error is named by type, with the case's first file
    assert failures["c05"].startswith(str(cases[5].files[0])) and "RuntimeError: device out of memory" in failures["c05"]
    assert set(report.seconds) == {c.name for c in cases} - {"c02", "c05", "c09"}
    assert backend.infer_threads == {threading.current_thread().name}, "the device runs on the calling thread"


def test_summary_lists_failures():
    report = PredictionReport(written=[Path("a.nii.gz")], skipped=["b"], total_seconds=2.0)
    assert report.ok
    assert "2 case(s): 1 predicted, 1 skipped" in report.summary()
    report.failures.append(CaseFailure("c", "x: bad"))
    assert not report.ok and "FAILED (1):\n  c: x: bad" in report.summary()


def test_package_exports_the_predict_function_not_a_module():
    """The batch module is not called ``predict``: a submodule of that name would replace the
    exported function on the package as soon as it is imported."""
    import importlib

    import medattn.inference
    from medattn.inference.batch import predict as batch_predict

    importlib.import_module("medattn.inference.batch")
    from medattn.inference import predict

    assert predict is batch_predict and callable(predict)
    assert medattn.inference.predict is batch_predict


def test_parts_split_sorted_names_like_nnunet_and_cover_every_case_once():
    cases = [Case(f"c{i:02d}", (Path(f"c{i:02d}_0000.nii.gz"),), ".nii.gz") for i in (4, 0, 3, 1)]
    problems = [GroupingProblem("c02", "c02_0001.nii.gz: channel 0 missing")]
    names = ["c00", "c01", "c02", "c03", "c04"]  # nnU-Net takes sorted identifiers[part_id::num_parts]
    seen = []
    for part_id in range(3):
        mine_cases, mine_problems = _this_part(cases, problems, 3, part_id)
        mine = sorted([c.name for c in mine_cases] + [p.name for p in mine_problems])
        assert mine == names[part_id::3]
        seen += mine
    assert sorted(seen) == names
    assert _this_part(cases, problems, 1, 0) == (cases, problems)
