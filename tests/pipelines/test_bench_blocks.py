"""``medattn bench blocks``: structure of its records on tiny shapes, its measuring helpers
against brute force, and the README's blocks section (every snippet runs, every claim holds).

No test looks at a timing value: only that timings exist, are positive and are as many as asked.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from medattn.cli import main
from medattn.pipelines import bench_blocks
from tests.cli_help import help_text

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_BLOCKS = ["se", "sna", 'dsm{"rd_ratio": 0.5}', "dia_light"]
_THREADS_BEFORE = torch.get_num_threads()
BATCH = 2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run on one 2D and one 3D stage: (exit code, stdout, JSON, markdown file text)."""
    out = tmp_path_factory.mktemp("bench_blocks")
    argv = ["bench", "blocks", "--quick", "--stages-2d", "0", "--stages-3d", "1", "--blocks", *QUICK_BLOCKS,
            "--power-iters", "2", "--threads", "1", "--no-progress", "--json", str(out / "blocks.json"),
            "--markdown", str(out / "blocks.md")]
    captured = _Capture()
    with captured:
        code = main(argv)
    return code, captured.text, json.loads((out / "blocks.json").read_text()), (out / "blocks.md").read_text()


class _Capture:
    """Collect what ``print`` writes to stdout (capsys is function-scoped; the run is not)."""

    def __enter__(self):
        import contextlib
        import io

        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buffer)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        self.text = self._buffer.getvalue()


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def test_help_describes_the_benchmark_with_examples(capsys):
    text = help_text(capsys, "bench", "blocks")
    assert "examples:" in text and "medattn bench blocks --quick" in text
    for option in ("--dims", "--blocks", "--stages-2d", "--stages-3d", "--repeats", "--quick", "--json",
                   "--markdown", "--power-iters", "--networks"):
        assert option in text


def test_bench_help_lists_blocks(capsys):
    assert "blocks" in help_text(capsys, "bench")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--blocks", "nope"], "unknown block 'nope'"),
        (["--blocks", "dia-gru"], "unknown block 'dia-gru'"),
        (["--blocks", 'dsm{"mode": "diagonal"}'], "diagonal"),
        (["--blocks", "se:rd_ratio=0.5"], 'block options are JSON: dsm{"rd_ratio": 0.5}'),
        (["--blocks", "sna@before_add"], "takes no @position or :stages; give 'sna'"),
        (["--blocks", "lstm"], "is now spelled 'dia'"),
        (["--dims", "2", "--image-size", "100"], "multiple of 32"),
        (["--dims", "3", "--stages-3d", "6"], "--stages-3d indices must be in 0..5"),
        (["--dims", "3", "--stages-3d", "5", "--patch-size", "40"], "divisible by 2^5"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--dims", "3", "--networks"], "needs --dims 2"),
        (["--compile"], "--compile times the whole networks: it needs --networks"),
    ],
)
def test_bad_options_fail_early_with_a_message(argv, message, capsys, tmp_path):
    json_path = tmp_path / "never.json"
    code = main(["bench", "blocks", "--quick", "--no-progress", "--json", str(json_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not json_path.exists()


def test_block_specs_are_placements_without_position():
    spec = bench_blocks.parse_block_spec('DSM{"rd_ratio": 0.5, "mode": "series", "identity_init": false}')
    assert (spec.name, spec.kind) == ("dsm", "block")
    assert spec.kwargs == {"rd_ratio": 0.5, "mode": "series", "identity_init": False}
    assert spec.label == 'dsm{"identity_init": false, "mode": "series", "rd_ratio": 0.5}'
    unit = bench_blocks.parse_block_spec('dia-light{"rd_ratio": 0.125}')  # the old spelling is an alias
    assert (unit.name, unit.kind, unit.kwargs, unit.label) == ("light", "dia", {"rd_ratio": 0.125},
                                                              'dia_light{"rd_ratio": 0.125}')


# ---------------------------------------------------------------------------------------
# The quick run's records
# ---------------------------------------------------------------------------------------


def test_quick_run_prints_the_tables_it_writes(quick_run):
    code, stdout, results, markdown = quick_run
    assert code == 0
    assert markdown.strip() == stdout.strip()
    assert "Command: `medattn bench blocks --dims 2 3 --blocks se sna 'dsm{\"rd_ratio\": 0.5}' dia_light" in markdown
    assert results["command"] in markdown
    for title in ("Blocks beside their stage", "DIA units shared", "Power iteration (SNA) vs torch.linalg.svd"):
        assert title in markdown
    assert "Whole ResNet-50 networks" not in markdown  # --quick leaves the networks out
    for label in QUICK_BLOCKS:
        assert label in markdown
    machine = results["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == 1 and machine["cpu"]


def test_thread_count_is_restored_after_the_run(quick_run):
    assert torch.get_num_threads() == _THREADS_BEFORE


def test_quick_run_has_one_record_per_stage_and_block(quick_run):
    _, _, results, _ = quick_run
    stages = [s["stage"] for s in results["stages"]]
    assert stages == ["ResNet-50 layer1 256×8²", "nnU-Net stage 1 64×8³"]
    assert [(r["stage"], r["block"]) for r in results["blocks"]] == [
        (stage, block) for stage in stages for block in ("se", "sna", 'dsm{"rd_ratio": 0.5}')
    ]
    assert [(r["stage"], r["unit"]) for r in results["dia"]] == [(stage, "dia_light") for stage in stages]
    assert results["networks"] == []
    assert results["settings"]["repeats"] == 1


def test_stage_shapes_follow_resnet50_and_nnunet(quick_run):
    _, _, results, _ = quick_run
    resnet, nnunet = results["stages"]
    # --quick: a 32 x 32 image, so ResNet-50's layer1 sees 64 x 8 x 8 (after the stem's 4x reduction).
    assert resnet["input_shape"] == [BATCH, 64, 8, 8] and resnet["output_shape"] == [BATCH, 256, 8, 8]
    assert resnet["num_blocks"] == 3
    # --quick: a 16^3 patch; stage 1 halves it and maps 32 to 64 channels with two conv blocks.
    assert nnunet["input_shape"] == [BATCH, 32, 16, 16, 16] and nnunet["output_shape"] == [BATCH, 64, 8, 8, 8]
    assert nnunet["num_blocks"] == 2


def test_stage_parameters_match_the_reference_networks(quick_run):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torchvision.models import resnet50

    _, _, results, _ = quick_run
    resnet, nnunet = results["stages"]
    assert resnet["params"] == sum(p.numel() for p in resnet50().layer1.parameters())
    unet = PlainConvUNet(
        input_channels=1, n_stages=2, features_per_stage=(32, 64), conv_op=nn.Conv3d, kernel_sizes=3,
        strides=(1, 2), n_conv_per_stage=2, num_classes=2, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )
    assert nnunet["params"] == sum(p.numel() for p in unet.encoder.stages[1].parameters())


def test_stage_flops_match_the_convolution_count(quick_run):
    """2 FLOPs per multiply-add of every convolution; norms and activations count zero."""
    _, _, results, _ = quick_run
    resnet, nnunet = results["stages"]
    positions = BATCH * 8 * 8
    width = 64
    first = 64 * width + 9 * width * width + width * 256 + 64 * 256  # + the 1x1 downsample shortcut
    later = 256 * width + 9 * width * width + width * 256
    assert resnet["flops_forward"] == 2 * positions * (first + 2 * later)
    voxels = BATCH * 8**3
    assert nnunet["flops_forward"] == 2 * voxels * 27 * (32 * 64 + 64 * 64)
    for stage in (resnet, nnunet):
        # Backward: the weight gradient and (except for a leaf input) the input gradient, each
        # as costly as the forward convolution.
        assert 2 * stage["flops_forward"] < stage["flops_train"] <= 3 * stage["flops_forward"]


def test_block_parameters_match_references(quick_run):
    from timm.layers import SEModule

    _, _, results, _ = quick_run
    by_key = {(r["stage"], r["block"]): r for r in results["blocks"]}
    for stage, channels in (("ResNet-50 layer1 256×8²", 256), ("nnU-Net stage 1 64×8³", 64)):
        assert by_key[stage, "se"]["params"] == sum(p.numel() for p in SEModule(channels).parameters())
        assert by_key[stage, "sna"]["params"] == 0
    # DIA-LSTM (Light), the paper's cell with IE transforms: 5 N R + R + 12 N, R = N / 4.
    for record, channels in zip(results["dia"], (256, 64)):
        rd = channels // 4
        assert record["added"]["params"] == 5 * channels * rd + rd + 12 * channels


def test_ratios_are_block_over_stage(quick_run):
    _, _, results, _ = quick_run
    stages = {s["stage"]: s for s in results["stages"]}
    for record in results["blocks"]:
        stage = stages[record["stage"]]
        for key in ("params", "flops_forward", "time_s", "peak_memory_bytes"):
            expected = record[key] / stage[key] if stage[key] else None
            assert record["vs_stage"][key] == pytest.approx(expected)
    for record in results["dia"]:
        stage = stages[record["stage"]]
        assert record["added"]["params"] == record["with_unit"]["params"] - stage["params"]
        assert record["vs_stage"]["time_s"] == pytest.approx(record["added"]["time_s"] / stage["time_s"])


def test_timings_and_memory_are_measured(quick_run):
    _, _, results, _ = quick_run
    repeats = results["settings"]["repeats"]
    for record in results["stages"] + results["blocks"] + [r["with_unit"] for r in results["dia"]]:
        assert len(record["time_samples_s"]) == repeats
        assert all(t > 0 for t in record["time_samples_s"])
    for stage in results["stages"]:
        # A training step holds at least the stage output and its gradient.
        output_bytes = 4 * math.prod(stage["output_shape"])
        assert stage["peak_memory_bytes"] >= 2 * output_bytes


def test_power_iteration_records_cover_sources_and_iterations(quick_run):
    _, _, results, _ = quick_run
    records = results["power_iteration"]
    assert [(r["stage"], r["source"], r["n_iter"]) for r in records] == [
        (stage, source, 2) for stage in ("ResNet-50 layer1 256×8²", "nnU-Net stage 1 64×8³")
        for source in ("gaussian", "stage output")
    ]
    # 2D: one 8x8 map per sample; 3D: SNA's default slicing cuts each 8^3 map into 8 slices.
    assert records[0]["matrices"] == [BATCH, 8, 8] and records[2]["matrices"] == [BATCH * 8, 8, 8]
    for record in records:
        assert record["power_time_s"] > 0 and record["svd_time_s"] > 0
        for key in ("sigma_rel_error", "angle_u_deg", "angle_v_deg"):
            assert 0 <= record[key + "_median"] <= record[key + "_max"]
        assert record["angle_u_deg_max"] <= 90 and record["angle_v_deg_max"] <= 90


# ---------------------------------------------------------------------------------------
# Measuring helpers against brute force
# ---------------------------------------------------------------------------------------


def test_peak_memory_counts_live_allocations():
    mib = 2**20

    def step():
        first = torch.ones(mib // 4)  # 1 MiB of float32
        second = torch.ones(mib // 4)
        del first, second
        third = torch.ones(mib // 8)  # freed 2 MiB, now holds 0.5 MiB: the peak stays 2 MiB
        return third

    assert bench_blocks.peak_memory_bytes(step, torch.device("cpu")) == 2 * mib


def test_triplet_errors_measure_known_angles_and_values():
    generator = torch.Generator().manual_seed(0)
    matrices = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    reference = torch.linalg.svd(matrices, full_matrices=False)
    left, singular, right_h = reference
    u, v = left[..., :, 0], right_h[..., 0, :]
    exact = bench_blocks._triplet_errors(singular[..., 0], -u, v, reference)  # sign does not matter
    assert exact["sigma_rel_error_max"] == 0
    assert exact["angle_u_deg_max"] < 1e-6 and exact["angle_v_deg_max"] < 1e-6

    # Rotate u by a known angle towards the second left singular vector, scale sigma by 1.01.
    angle = math.radians(3.0)
    rotated = math.cos(angle) * u + math.sin(angle) * left[..., :, 1]
    errors = bench_blocks._triplet_errors(1.01 * singular[..., 0], rotated, v, reference)
    assert errors["sigma_rel_error_max"] == pytest.approx(0.01)
    assert errors["angle_u_deg_max"] == pytest.approx(3.0) and errors["angle_u_deg_median"] == pytest.approx(3.0)


def test_count_flops_counts_forward_and_backward_of_a_linear_layer():
    layer = nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8, requires_grad=True)
    forward, total = bench_blocks.count_flops(layer, x, torch.ones(5, 4))
    assert forward == 2 * 5 * 8 * 4
    assert total == 3 * forward  # grad of the input and of the weight
    assert layer.weight.grad is None and x.grad is None  # left clean for the next measurement


# ---------------------------------------------------------------------------------------
# Whole networks (slow: seven ResNet-50s)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_network_variants_add_what_their_blocks_hold(tmp_path):
    from torchvision.models import resnet50

    from medattn import blocks
    from medattn.blocks.dia import create_unit

    json_path, markdown = tmp_path / "networks.json", tmp_path / "networks.md"
    code = main(["bench", "blocks", "--quick", "--dims", "2", "--stages-2d", "3", "--blocks", "eca", "--networks",
                 "--no-memory", "--power-iters", "1", "--threads", "1", "--no-progress", "--json", str(json_path),
                 "--markdown", str(markdown)])
    assert code == 0
    goals = markdown.read_text().split("**Goals**", 1)[1]
    assert "| SNA adds no parameters (`+ SNA`) | 0 | +0 | pass |" in goals
    records = {r["network"]: r for r in json.loads(json_path.read_text())["networks"]}
    stock = records["ResNet-50"]["params"]
    assert stock == sum(p.numel() for p in resnet50().parameters())

    def params(module):
        return sum(p.numel() for p in module.parameters())

    widths, depths = (64, 128, 256, 512), (3, 4, 6, 3)
    assert records["+ SNA"]["params"] == stock
    assert records["+ SE"]["params"] - stock == sum(
        n * params(blocks.create("se", 4 * w)) for w, n in zip(widths, depths))
    assert records["+ DSM (DSNet50-A)"]["params"] - stock == 3 * params(blocks.create("dsm", 512, rd_ratio=1 / 2))
    assert records["+ DSM (DSNet50-B)"]["params"] - stock == sum(
        n * params(blocks.create("dsm", w, rd_ratio=1 / 16)) for w, n in zip(widths, depths))
    assert records["+ DIA-LSTM"]["params"] - stock == sum(params(create_unit("lstm", 4 * w)) for w in widths)
    # The rows are the networks users build with medattn.images.
    from medattn import images

    assert records["+ DSM (DSNet50-B)"]["params"] == params(images.create("dsnet50_b"))
    assert "dsnet50_a" in records["+ DSM (DSNet50-A)"]["placement"]
    for record in records.values():
        assert record["vs_stock"]["params"] == pytest.approx(record["params"] / stock)
        assert record["inference_time_s"] > 0 and record["time_s"] > 0
        assert record["peak_memory_bytes"] is None  # --no-memory
    ratio = records["+ DSM (DSNet50-B)"]["vs_stock"]["inference_time_s"]
    verdict = "pass" if ratio <= 1.08 else "**fail**"
    assert f"| DSNet50-B inference (`+ DSM (DSNet50-B)`) | ≤ 1.08× | {ratio:.3f}× | {verdict} |" in goals


# ---------------------------------------------------------------------------------------
# README: the blocks section
# ---------------------------------------------------------------------------------------


def _readme_section() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("<!-- section:blocks -->", 1)[1].split("<!-- /section:blocks -->", 1)[0]


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _readme_section(), flags=re.S)


_PRINT_WITH_EXPECTATION = re.compile(r"^(\s*)print\((.*)\)\s*#\s*(.+?)\s*$")


def _with_checked_prints(code: str) -> str:
    """Turn ``print(expr)  # shown`` into an assertion that ``str(expr) == "shown"``."""
    lines = []
    for line in code.splitlines():
        match = _PRINT_WITH_EXPECTATION.match(line)
        if match:
            indent, expression, shown = match.groups()
            line = f"{indent}assert str({expression}) == {shown!r}, str({expression})"
        lines.append(line)
    return "\n".join(lines)


def test_readme_section_has_snippets():
    assert len(_snippets()) >= 4


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs_and_prints_what_it_says(index):
    code = _with_checked_prints(_snippets()[index])
    exec(compile(code, f"README.md blocks snippet {index}", "exec"), {"__name__": "readme_snippet"})


def test_readme_parameter_counts_are_the_blocks():
    from medattn import blocks

    rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d,]+)[^|]*\|$", _readme_section(), flags=re.M)
    assert {name for name, _ in rows} == set(blocks.available())
    for name, count in rows:
        block = blocks.create(name, 256, spatial_dims=2)
        assert sum(p.numel() for p in block.parameters()) == int(count.replace(",", "")), name


def test_network_goals_read_the_compiled_ratios_bench_blocks_records():
    """bench blocks' network records feed bench image's goal table, compiled column included."""
    from medattn.pipelines.bench_blocks import NETWORK_GOALS, network_goal_rows
    from medattn.pipelines.bench_image import goal_table

    stock = {"network": "resnet50", "params": 100, "vs_stock": {"flops_forward": 1.0, "inference_time_s": 1.0,
                                                                 "inference_time_compiled_s": 1.0}}
    sna = {"network": "+ SNA", "params": 100, "vs_stock": {"flops_forward": 1.0, "inference_time_s": 1.07,
                                                           "inference_time_compiled_s": 1.01}}
    table = goal_table(network_goal_rows([stock, sna]), NETWORK_GOALS, compiled=True)
    line = next(row for row in table.splitlines() if "SNA-ResNet-50 at 224², inference" in row)
    assert line.endswith("| ≤ 1.04× | 1.070× | **fail** | 1.010× | pass |"), line
