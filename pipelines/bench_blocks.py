"""``medattn bench blocks``: what each attention block costs beside the conv stage it attaches to.

For every stage shape the benchmark builds the stage and every block, and measures them
side by side in one process:

* parameters; forward FLOPs (``torch.utils.flop_counter.FlopCounterMode``, which counts
  convolutions and matrix products: 2 FLOPs per multiply-add, element-wise ops, softmax,
  pooling and norms count 0);
* forward+backward latency: one training step ``module(x).backward(g)`` on an input that
  requires grad, timed interleaved (stage, block 1, block 2, ..., stage, block 1, ...), the
  fastest of ``--repeats`` rounds: on a shared machine other processes only ever add time,
  so the minimum estimates the module's own cost best (the JSON also has the median and
  every sample). The FLOP count and the memory pass have already run every module, so no
  warm-up round is needed unless ``--warmup`` asks for one;
* peak memory of that step above the memory held before it (inputs and weights excluded,
  gradients included): on CPU from the allocation events of ``torch.profiler``
  (``profile_memory=True``: every allocation and free of PyTorch's CPU allocator, summed in
  time order), on CUDA ``torch.cuda.max_memory_allocated``;
* the block / stage ratio of each of these.

Stages (batch 2 by default):

* 2D: the four bottleneck stages of torchvision's ResNet-50 at a 224 x 224 input, whose
  outputs are 256 x 56^2, 512 x 28^2, 1024 x 14^2 and 2048 x 7^2;
* 3D: nnU-Net stages, 2 x (conv3x3x3 + InstanceNorm + LeakyReLU) built with
  dynamic-network-architectures' StackedConvBlocks (nnU-Net's defaults: conv bias,
  affine InstanceNorm eps 1e-5, stride 2 in the first conv except in stage 0), outputs
  32 x 128^3, 64 x 64^3, 128 x 32^3, 256 x 16^3, 320 x 8^3 and 320 x 4^3 for a 128^3
  patch.

Blocks are written as placements (medattn.placement) without position or stages:
a per-feature-map block (cbam, dsm, eca, gc, se, sna; JSON options, e.g.
``dsm{"rd_ratio": 0.5}``) is measured alone on the stage's output shape. A DIA unit
(``dia``, ``dia_light``, ``dia_se``, ``dia_eca``) is shared by the stage's blocks
(the residual branch of each bottleneck, each conv block of an nnU-Net stage) through
medattn.insertion.attach_shared_unit, and the stage with the unit is timed against the
same stage without it.

Also measured: SNA's power iteration (medattn.blocks.sna.top_singular_triplets) against
torch.linalg.svd on the channel-mean maps the SNA block sees at each stage (Gaussian
maps, the hard case, and the stage's own output), time and error (relative error of the
top singular value and angle of the singular vectors, against float64 SVD); and, with
2D, whole ResNet-50 networks built by medattn.images (the presets dsnet50_a, dsnet50_b,
se_resnet50, sna_resnet50, and resnet50 with one DIA unit per stage) against the stock
network, for comparison with the papers' overhead figures.

examples:
  medattn bench blocks                                   # everything, as in docs/benchmarks.md
  medattn bench blocks --quick                           # tiny shapes, one round: a smoke test
  medattn bench blocks --dims 3 --stages-3d 1 2 3 4 5 --repeats 3 --blocks dsm sna dia
  medattn bench blocks --dims 2 --blocks se 'dsm{"rd_ratio": 0.5}' --json blocks.json --markdown blocks.md
"""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import dataclass, field

from medattn.devices import add_device_argument

DESCRIPTION = "cost of each attention block (params, FLOPs, latency, memory) beside its conv stage\n\n" + (
    __doc__.split("\n", 2)[2].strip().replace("``", "")
)

#: Output channels of nnU-Net's default 3D encoder stages (features 32, doubling, capped at 320).
NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)
#: Bottleneck blocks per stage of ResNet-50 (torchvision's layer1..layer4).
RESNET50_BLOCKS = (3, 4, 6, 3)
#: Per-feature-map blocks and DIA units measured by default; rd_ratio 0.5 is DSNet50-A's ratio.
DEFAULT_BLOCKS = ("cbam", "dsm", 'dsm{"rd_ratio": 0.5}', "eca", "gc", "se", "sna", "dia", "dia_light")
#: Solver calls shorter than this are repeated within one timing sample.
SHORT_STEP_S = 0.02
#: What the papers report for the network variants of :func:`resnet50_variants` (checked
#: against /work/shared/papers; FLOPs there are multiply-adds, FPS are inference).
PAPER_ANCHORS = {
    "+ SE": "SNA paper Tab. 2 (ResNet-50, ImageNet): 26.79M vs 24.38M params (+9.9%), FLOPs equal",
    "+ SNA": "SNA paper Tab. 1 (ResNet-18, CIFAR-100): no params, FLOPs equal, 217 vs 225 FPS (-3.6%)",
    "+ DSM (DSNet50-A)": "DSNet Tabs. 5/6/8: +3.54/+3.55/+3.552M params; Tab. 5 (Synapse): +4.1% FLOPs "
    "(Tab. 7 swaps the A and B rows)",
    "+ DSM (DSNet50-B)": "DSNet Tabs. 5/6/8: +1.81/+1.82/+1.815M params; Tab. 5 (Synapse): +3.3% FLOPs",
    "+ DIA-LSTM": "DIA Sec. 7.3.1 (ResNet164, CIFAR): inference about 12% slower",
    "+ DIA-LSTM (Light)": "DIA Sec. 7.3.1 (ResNet164, CIFAR): inference about 1% slower",
}
QUICK = {"image_size": 32, "patch_size": 16, "stages": (0, 1), "repeats": 1, "power_iters": (2, 10)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[2, 3],
                        help="which stage families to run: 2 (ResNet-50) and/or 3 (nnU-Net) (default: 2 3)")
    parser.add_argument("--blocks", nargs="+", default=list(DEFAULT_BLOCKS), metavar="BLOCK",
                        help="blocks to measure, as placements without position or stages: cbam dsm eca gc se "
                        "sna, with JSON options as in 'dsm{\"rd_ratio\": 0.5}', and the DIA units dia dia_light "
                        f"dia_se dia_eca (default: {' '.join(DEFAULT_BLOCKS)})")
    parser.add_argument("--stages-2d", type=int, nargs="+", metavar="I",
                        help="ResNet-50 stage indices 0-3 (layer1..layer4; default: all, --quick: 0 1)")
    parser.add_argument("--stages-3d", type=int, nargs="+", metavar="I",
                        help="nnU-Net stage indices 0-5 (32x128^3 .. 320x4^3; default: all, --quick: 0 1)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--image-size", type=int,
                        help="2D input image size, a multiple of 32 (default: 224, --quick: 32)")
    parser.add_argument("--patch-size", type=int,
                        help="3D patch size, divisible by 2 per stage (default: 128, --quick: 16)")
    parser.add_argument("--repeats", type=int, help="timed rounds per module, the fastest is reported (default: 5)")
    parser.add_argument("--warmup", type=int, help="untimed rounds before timing (default: 0)")
    parser.add_argument("--power-iters", type=int, nargs="+", metavar="N",
                        help="power-iteration counts compared with SVD (default: 2 5 10, --quick: 2 10)")
    parser.add_argument("--networks", action=argparse.BooleanOptionalAction, default=None,
                        help="also compare whole ResNet-50 networks with the papers' placements "
                        "(default: on with --dims 2, off with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--compile", action="store_true",
                        help="also time the whole networks' inference compiled with torch.compile (a column of "
                        "the networks and goal tables; minutes of compiling per network on CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes (32^2 image, 16^3 patch, two stages each), one round, no networks")
    add_device_argument(parser, what="the measurements (MPS falls back to the CPU)")
    parser.add_argument("--threads", type=int,
                        help="intra-op threads for the run (default: torch's, one per core); on a machine "
                        "shared with other jobs, 1 avoids the stalls of threads waiting for each other")
    parser.add_argument("--seed", type=int, default=0, help="random seed of weights and inputs (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the printed tables to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------
# Settings and specs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSpec:
    """One entry of ``--blocks``: a registry block (kind "block") or a DIA unit (kind "dia")."""

    label: str
    name: str
    kind: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """One conv stage: its input and output shapes (without batch) and how to build it."""

    dims: int
    index: int
    family: str  # "resnet50" or "nnunet"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    num_blocks: int

    @property
    def label(self) -> str:
        channels, *spatial = self.out_shape
        size = "×".join(str(s) for s in spatial) if len(set(spatial)) > 1 else f"{spatial[0]}{'²³'[self.dims - 2]}"
        name = f"ResNet-50 layer{self.index + 1}" if self.family == "resnet50" else f"nnU-Net stage {self.index}"
        return f"{name} {channels}×{size}"


def parse_block_spec(text: str) -> BlockSpec:
    """Read one ``--blocks`` entry in the placement text form (:mod:`medattn.placement`):
    ``BLOCK[{JSON options}]``, e.g. ``dsm{"rd_ratio": 0.5}`` or ``dia_light``.

    Raises:
        ValueError: for what the placement parser refuses, and for a position or stages,
            which mean nothing for a block measured beside one stage.
    """
    from medattn import placement

    spec = placement.parse(text)
    if spec is None:
        raise ValueError(f"--blocks {text!r}: name a block, not 'none' (the stage itself is always measured)")
    if spec.position is not None or spec.stages != "all":
        raise ValueError(f"--blocks {text!r}: a block is measured beside one stage, so it takes no @position or "
                         f":stages; give {placement.Placement(spec.block, options=spec.options).to_text()!r}")
    label = spec.to_text()
    if spec.is_unit:
        return BlockSpec(label, spec.unit_kind, "dia", dict(spec.options))
    return BlockSpec(label, spec.block, "block", dict(spec.options))


def resnet50_stages(image_size: int, indices) -> list[StageSpec]:
    """The bottleneck stages of ResNet-50 (torchvision layer1..layer4) for a square image.

    Raises:
        ValueError: if ``image_size`` is not a positive multiple of 32 or an index is not 0-3.
    """
    if image_size < 32 or image_size % 32:
        raise ValueError(
            f"--image-size must be a positive multiple of 32 (ResNet-50 downsamples 32x), got {image_size}"
        )
    specs = []
    for index in _checked_indices(indices, len(RESNET50_BLOCKS), "--stages-2d"):
        out_channels = 256 * 2**index
        in_channels = 64 if index == 0 else out_channels // 2
        out_size = image_size // 4 // 2**index
        in_size = out_size if index == 0 else 2 * out_size
        specs.append(StageSpec(2, index, "resnet50", (in_channels, in_size, in_size),
                               (out_channels, out_size, out_size), RESNET50_BLOCKS[index]))
    return specs


def nnunet_stages(patch_size: int, indices) -> list[StageSpec]:
    """nnU-Net's default 3D encoder stages (2 conv blocks each) for a cubic patch.

    Raises:
        ValueError: if ``patch_size`` cannot be halved down to the deepest chosen stage, or an
            index is not 0-5.
    """
    indices = _checked_indices(indices, len(NNUNET_FEATURES), "--stages-3d")
    deepest = max(indices)
    if patch_size < 2**deepest or patch_size % 2**deepest:
        raise ValueError(
            f"--patch-size must be divisible by 2^{deepest} = {2**deepest} for stage {deepest}, got {patch_size}"
        )
    specs = []
    for index in indices:
        out_size = patch_size // 2**index
        in_channels = 1 if index == 0 else NNUNET_FEATURES[index - 1]
        in_size = out_size if index == 0 else 2 * out_size
        specs.append(StageSpec(3, index, "nnunet", (in_channels,) + (in_size,) * 3,
                               (NNUNET_FEATURES[index],) + (out_size,) * 3, 2))
    return specs


def _checked_indices(indices, count: int, option: str) -> list[int]:
    indices = list(range(count)) if indices is None else sorted(set(indices))
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(f"{option} indices must be in 0..{count - 1}, got {bad}")
    return indices


def resolve_settings(args) -> dict:
    """Fill the options left unset from the defaults or ``--quick``, and check them.

    Raises:
        ValueError: for a non-positive batch, repeats, thread count or iteration count.
    """
    quick = args.quick
    settings = {
        "dims": sorted(set(args.dims)),
        "batch": args.batch,
        "image_size": args.image_size or (QUICK["image_size"] if quick else 224),
        "patch_size": args.patch_size or (QUICK["patch_size"] if quick else 128),
        "stages_2d": args.stages_2d if args.stages_2d is not None else (QUICK["stages"] if quick else None),
        "stages_3d": args.stages_3d if args.stages_3d is not None else (QUICK["stages"] if quick else None),
        "repeats": args.repeats if args.repeats is not None else (QUICK["repeats"] if quick else 5),
        "warmup": args.warmup if args.warmup is not None else 0,
        "power_iters": list(args.power_iters or (QUICK["power_iters"] if quick else (2, 5, 10))),
        "networks": (2 in args.dims and not quick) if args.networks is None else args.networks,
        "memory": not args.no_memory,
        "compile": args.compile,
        "seed": args.seed,
    }
    for key in ("batch", "repeats"):
        if settings[key] < 1:
            raise ValueError(f"--{key} must be at least 1, got {settings[key]}")
    if settings["warmup"] < 0:
        raise ValueError(f"--warmup must be 0 or more, got {settings['warmup']}")
    if min(settings["power_iters"]) < 1:
        raise ValueError(f"--power-iters must be positive, got {settings['power_iters']}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if settings["networks"] and 2 not in settings["dims"]:
        raise ValueError("--networks compares ResNet-50 networks: it needs --dims 2")
    if settings["compile"] and not settings["networks"]:
        raise ValueError("--compile times the whole networks: it needs --networks (and --dims 2)")
    return settings


# ---------------------------------------------------------------------------------------
# Building stages, blocks and networks
# ---------------------------------------------------------------------------------------


def build_stage(spec: StageSpec):
    """The conv stage of ``spec``: torchvision's ResNet-50 layer, or nnU-Net's StackedConvBlocks."""
    if spec.family == "resnet50":
        from torchvision.models import resnet50

        # Only the wanted layer is kept; building the whole network gives torchvision's own
        # layer construction (strides, downsample shortcuts) and initialisation.
        return getattr(resnet50(weights=None), f"layer{spec.index + 1}")
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
    from torch import nn

    return StackedConvBlocks(
        2, nn.Conv3d, spec.in_shape[0], spec.out_shape[0], kernel_size=3,
        initial_stride=1 if spec.index == 0 else 2, conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )


def block_outputs(spec: StageSpec, stage) -> list:
    """The modules whose outputs a shared DIA unit recalibrates, as the placement adapters
    define them: the ``before_add`` host of each bottleneck (``bn3``, the residual branch's
    end, as in the DIA paper), or each ConvDropoutNormReLU layer of an nnU-Net stage (a plain
    stage has no branch)."""
    if spec.family == "resnet50":
        from medattn.images.resnets import block_hosts

        return [block_hosts(bottleneck)["before_add"][0] for bottleneck in stage]
    return list(stage.convs)


def build_dia_stage(spec: StageSpec, stage, block: BlockSpec):
    """A deep copy of ``stage`` with a DIA unit shared by its blocks."""
    import copy

    from medattn.blocks.dia import create_unit
    from medattn.insertion import attach_shared_unit

    stage = copy.deepcopy(stage)
    unit = create_unit(block.name, spec.out_shape[0], spatial_dims=spec.dims, num_blocks=spec.num_blocks,
                       **block.kwargs)
    attach_shared_unit(stage, block_outputs(spec, stage), unit)
    return stage


def build_block(spec: StageSpec, block: BlockSpec):
    from medattn import blocks

    return blocks.create(block.name, spec.out_shape[0], spatial_dims=spec.dims, **block.kwargs)


#: The whole-network rows: (label, preset of medattn.images, placement added to a stock preset).
NETWORK_ROWS = (
    ("ResNet-50", "resnet50", None),
    ("+ SE", "se_resnet50", None),
    ("+ SNA", "sna_resnet50", None),
    ("+ DSM (DSNet50-A)", "dsnet50_a", None),
    ("+ DSM (DSNet50-B)", "dsnet50_b", None),
    ("+ DIA-LSTM", "resnet50", "dia"),
    ("+ DIA-LSTM (Light)", "resnet50", "dia_light"),
)


def resnet50_variants() -> dict:
    """ResNet-50 with the papers' placements, by label: ``label -> (builder, placement)``.

    Each builder returns a fresh network from :func:`medattn.images.create`, the networks
    users build (stock torchvision ResNet-50, blocks attached through the placement spec).
    """
    from medattn import images

    variants = {}
    for label, preset, attention in NETWORK_ROWS:
        placed = attention or images.preset(preset).attention
        description = f"preset {preset}" + (f" + {attention}" if attention else "") + (f": {placed}" if placed else "")
        variants[label] = (lambda p=preset, a=attention: images.create(p, num_classes=1000, attention=a), description)
    return variants


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def count_parameters(module) -> int:
    """Trainable parameters; tensors shared between sub-modules (DIA) count once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_flops(module, x, grad) -> tuple[int, int]:
    """``(forward, forward + backward)`` FLOPs of one training step, by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward_counter:
        out = module(x)
    with FlopCounterMode(display=False) as backward_counter:
        out.backward(grad)
    forward = forward_counter.get_total_flops()
    _clear_grads(module, x)
    return forward, forward + backward_counter.get_total_flops()


def training_step(module, x, grad):
    """A closure running ``module(x).backward(grad)`` with fresh gradients each call."""

    def step():
        _clear_grads(module, x)
        module(x).backward(grad)

    return step


def inference_step(module, x):
    import torch

    def step():
        with torch.inference_mode():
            module(x)

    return step


def _clear_grads(module, x) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None


def peak_memory_bytes(step, device) -> int:
    """Peak memory that one call of ``step`` allocates above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the call. CPU:
    the memory events of ``torch.profiler`` (every allocation and free of PyTorch's CPU
    allocator during the call, with its size), summed in time order; the maximum of that
    running sum is the peak. Allocations outside PyTorch's allocator are not seen.
    """
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _silenced_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _silenced_stderr():
    """Send file descriptor 2 to /dev/null for the duration: Kineto (the profiler's backend)
    prints two log lines on every profiling session, and a GPU probe error on CPU machines."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def time_interleaved(steps: dict, repeats: int, warmup: int, device, progress,
                     min_sample_s: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each step, measured in rounds that run every step once.

    Interleaving exposes every step to the same machine load, so ratios between steps stay
    meaningful on a busy machine even when absolute times drift. With ``min_sample_s``, a
    step faster than that is called repeatedly within one sample (the count is calibrated by
    one untimed call) so that timer resolution and scheduler noise do not dominate it.
    """
    import time

    import torch

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    calls = {label: 1 for label in steps}
    if min_sample_s > 0:
        for label, step in steps.items():
            calls[label] = max(1, math.ceil(min_sample_s / max(timed(step), 1e-9)))

    def sample(step, count: int) -> float:
        return timed(lambda: [step() for _ in range(count)]) / count

    samples = {label: [] for label in steps}
    for round_index in range(warmup + repeats):
        for label, step in steps.items():
            progress.set_postfix_str(label, refresh=False)
            seconds = sample(step, calls[label])
            if round_index >= warmup:
                samples[label].append(seconds)
            progress.update()
    return samples


def timing_summary(samples: list[float], prefix: str = "time") -> dict:
    """``{prefix}_s`` (the fastest sample), ``{prefix}_median_s`` and ``{prefix}_samples_s``."""
    import statistics

    return {f"{prefix}_s": min(samples), f"{prefix}_median_s": statistics.median(samples),
            f"{prefix}_samples_s": samples}


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def bench_stage(spec: StageSpec, block_specs: list[BlockSpec], settings: dict, device, progress) -> dict:
    """Measure the stage, each block on its output and each DIA unit on it, side by side.

    Returns:
        ``{"stage": record, "blocks": [records], "dia": [records], "maps": tensor}`` where
        ``maps`` are the channel means of the stage output (for the power-iteration section).
    """
    import torch

    torch.manual_seed(settings["seed"])
    batch = settings["batch"]
    stage = build_stage(spec)
    modules = {"stage": stage}
    for block in block_specs:
        modules[block.label] = build_dia_stage(spec, stage, block) if block.kind == "dia" else build_block(spec, block)
    for module in modules.values():
        module.to(device).train()

    # nnU-Net's first stage reads the image, which needs no gradient; every other stage
    # input is an activation of the network.
    image_input = spec.family == "nnunet" and spec.index == 0
    stage_input = torch.randn(batch, *spec.in_shape, device=device, requires_grad=not image_input)
    block_input = torch.randn(batch, *spec.out_shape, device=device, requires_grad=True)
    output_grad = torch.randn(batch, *spec.out_shape, device=device)
    inputs = {label: block_input if _is_block(label, block_specs) else stage_input for label in modules}

    measured = {}
    for label, module in modules.items():
        progress.set_postfix_str(f"{label}: FLOPs, memory", refresh=True)
        flops_forward, flops_train = count_flops(module, inputs[label], output_grad)
        step = training_step(module, inputs[label], output_grad)
        peak = peak_memory_bytes(step, device) if settings["memory"] else None
        measured[label] = {"params": count_parameters(module), "flops_forward": flops_forward,
                           "flops_train": flops_train, "peak_memory_bytes": peak}
        progress.update()
    steps = {label: training_step(module, inputs[label], output_grad) for label, module in modules.items()}
    samples = time_interleaved(steps, settings["repeats"], settings["warmup"], device, progress)
    for label in modules:
        measured[label] |= timing_summary(samples[label])

    with torch.no_grad():
        maps = stage(stage_input).mean(dim=1)
    return _stage_records(spec, block_specs, measured, batch) | {"maps": maps}


def _is_block(label: str, block_specs: list[BlockSpec]) -> bool:
    return any(b.label == label and b.kind == "block" for b in block_specs)


def _stage_records(spec: StageSpec, block_specs: list[BlockSpec], measured: dict, batch: int) -> dict:
    base = measured["stage"]
    common = {"dims": spec.dims, "stage": spec.label, "stage_index": spec.index, "batch": batch}
    stage_record = common | {"input_shape": [batch, *spec.in_shape], "output_shape": [batch, *spec.out_shape],
                             "num_blocks": spec.num_blocks} | base
    block_records, dia_records = [], []
    for block in block_specs:
        values = measured[block.label]
        if block.kind == "block":
            block_records.append(common | {"block": block.label, "input_shape": [batch, *spec.out_shape]} | values
                                 | {"vs_stage": _ratios(values, base)})
        else:
            added = {key: values[key] - base[key] for key in ("params", "flops_forward", "flops_train", "time_s")}
            dia_records.append(common | {"unit": block.label, "num_blocks": spec.num_blocks, "with_unit": values,
                                         "added": added, "vs_stage": _ratios(added, base)})
    return {"stage": stage_record, "blocks": block_records, "dia": dia_records}


def _ratios(values: dict, base: dict) -> dict:
    keys = ("params", "flops_forward", "flops_train", "time_s", "peak_memory_bytes")
    return {key: (values[key] / base[key] if values.get(key) is not None and base.get(key) else None) for key in keys}


def bench_power_iteration(spec: StageSpec, stage_maps, settings: dict, device, progress) -> list[dict]:
    """Power iteration (SNA's solver) against ``torch.linalg.svd`` on the maps SNA sees.

    The maps are the channel means of a (B, C, *spatial) feature map; in 3D the SNA block
    cuts each (D, H, W) map into D matrices of H x W (its default ``slice_axis=0``). Both
    solvers run in float32 without autograd; errors are measured against float64 SVD.
    """
    import torch

    from medattn.blocks.sna import top_singular_triplets

    generator = torch.Generator().manual_seed(settings["seed"])
    sources = {
        "gaussian": torch.randn(stage_maps.shape, generator=generator).to(device),
        "stage output": stage_maps,
    }
    records = []
    for source, maps in sources.items():
        matrices = maps.reshape(-1, *maps.shape[-2:]).float().contiguous()
        reference = torch.linalg.svd(matrices.double(), full_matrices=False)
        steps = {"svd": _no_grad(lambda m=matrices: torch.linalg.svd(m, full_matrices=False))}
        for n_iter in settings["power_iters"]:
            steps[f"power {n_iter}"] = _no_grad(lambda m=matrices, n=n_iter: top_singular_triplets(m, n_iter=n))
        for step in steps.values():  # first calls set up LAPACK workspaces and kernels
            step()
        samples = time_interleaved(steps, settings["repeats"], settings["warmup"], device, progress,
                                   min_sample_s=SHORT_STEP_S)
        for n_iter in settings["power_iters"]:
            with torch.no_grad():
                sigma, u, v = top_singular_triplets(matrices, n_iter=n_iter)
            errors = _triplet_errors(sigma[..., 0], u[..., 0], v[..., 0], reference)
            records.append({
                "dims": spec.dims, "stage": spec.label, "source": source,
                "matrices": [matrices.shape[0], *matrices.shape[1:]], "n_iter": n_iter,
                **timing_summary(samples[f"power {n_iter}"], "power_time"),
                **timing_summary(samples["svd"], "svd_time"),
                **errors,
            })
    return records


def _no_grad(function):
    import torch

    def step():
        with torch.no_grad():
            function()

    return step


def _triplet_errors(sigma, u, v, reference) -> dict:
    """Relative error of sigma_1 and angles (degrees) of u_1, v_1 against an SVD; max and median."""
    import torch

    left, singular, right_h = reference
    sigma_ref = singular[..., 0]
    nonzero = sigma_ref > 0
    relative = ((sigma.double() - sigma_ref).abs() / sigma_ref.clamp_min(torch.finfo(sigma_ref.dtype).tiny))[nonzero]
    angle_u = _angle_degrees(u.double(), left[..., :, 0])[nonzero]
    angle_v = _angle_degrees(v.double(), right_h[..., 0, :])[nonzero]
    summary = {}
    for name, values in (("sigma_rel_error", relative), ("angle_u_deg", angle_u), ("angle_v_deg", angle_v)):
        summary[f"{name}_max"] = float(values.max()) if values.numel() else 0.0
        summary[f"{name}_median"] = float(values.median()) if values.numel() else 0.0
    return summary


def _angle_degrees(a, b):
    """Angle between the lines spanned by unit vectors ``a`` and ``b`` (sign-free), computed as
    atan2(|a - (a.b) b|, |a.b|), which stays accurate for tiny angles where acos does not."""
    import torch

    dot = (a * b).sum(-1, keepdim=True)
    orthogonal = torch.linalg.vector_norm(a - dot * b, dim=-1)
    return torch.rad2deg(torch.atan2(orthogonal, dot.squeeze(-1).abs()))


def bench_networks(settings: dict, device, progress) -> list[dict]:
    """Whole ResNet-50 variants at ``image_size``: params, FLOPs, inference and training latency."""
    import torch

    torch.manual_seed(settings["seed"])
    size = settings["image_size"]
    x = torch.randn(settings["batch"], 3, size, size, device=device)
    variants = resnet50_variants()
    networks = {label: builder().to(device).train() for label, (builder, _) in variants.items()}
    grad = torch.randn(settings["batch"], 1000, device=device)
    records = {}
    for label, network in networks.items():
        progress.set_postfix_str(f"{label}: FLOPs, memory", refresh=True)
        forward, train = count_flops(network, x, grad)
        peak = peak_memory_bytes(training_step(network, x, grad), device) if settings["memory"] else None
        records[label] = {"network": label, "placement": variants[label][1], "paper": PAPER_ANCHORS.get(label, ""),
                          "params": count_parameters(network),
                          "flops_forward": forward, "flops_train": train, "peak_memory_bytes": peak}
        progress.update()
    train_samples = time_interleaved({label: training_step(n, x, grad) for label, n in networks.items()},
                                     settings["repeats"], settings["warmup"], device, progress)
    for network in networks.values():
        network.eval()
    infer_steps = {label: inference_step(n, x.detach()) for label, n in networks.items()}
    for step in infer_steps.values():  # eval mode and inference_mode take other kernels: warm them
        step()
    infer_samples = time_interleaved(infer_steps, settings["repeats"], settings["warmup"], device, progress)
    base_label = next(iter(networks))
    for label, record in records.items():
        record |= timing_summary(train_samples[label]) | timing_summary(infer_samples[label], "inference_time")
    if settings["compile"]:
        progress.set_postfix_str("torch.compile", refresh=True)
        compiled = {label: inference_step(torch.compile(n), x.detach()) for label, n in networks.items()}
        for step in compiled.values():  # compiles (minutes on CPU), outside the timing
            step()
        samples = time_interleaved(compiled, settings["repeats"], settings["warmup"], device, progress)
        for label, record in records.items():
            record |= timing_summary(samples[label], "inference_time_compiled")
    base = records[base_label]
    for record in records.values():
        record["vs_stock"] = _ratios(record, base) | {
            key: record[key] / base[key] for key in ("inference_time_s", "inference_time_compiled_s") if key in record}
    return list(records.values())


#: Goals of issue 15 that the whole ResNet-50 networks measure: (row, measure, limit, what).
NETWORK_GOALS = [
    ("+ SNA", "params_added", 0, "SNA adds no parameters"),
    ("+ SNA", "infer_ratio", 1.04, "SNA-ResNet-50 at 224², inference"),
    ("+ DSM (DSNet50-A)", "flops_ratio", 1.04, "DSNet50-A FLOPs (DSNet Table 5)"),
    ("+ DSM (DSNet50-A)", "infer_ratio", 1.05, "DSNet50-A inference"),
    ("+ DSM (DSNet50-B)", "infer_ratio", 1.08, "DSNet50-B inference"),
]


def network_goal_rows(records: list[dict]) -> list[dict]:
    """The network records in the form :func:`medattn.pipelines.bench_image.goal_table` reads."""
    base = records[0]
    rows = []
    for r in records:
        row = {"preset": r["network"], "params_added": r["params"] - base["params"],
               "flops_ratio": r["vs_stock"]["flops_forward"], "infer_ratio": r["vs_stock"]["inference_time_s"]}
        if "inference_time_compiled_s" in r["vs_stock"]:
            row["infer_compiled_ratio"] = r["vs_stock"]["inference_time_compiled_s"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Running, machine description, tables
# ---------------------------------------------------------------------------------------


def run(args) -> int:
    import sys

    try:
        settings = resolve_settings(args)
        block_specs = list({spec.label: spec for spec in map(parse_block_spec, args.blocks)}.values())
        stages = _stage_specs(settings)
        device = _device(args.device)
        _check_block_options(block_specs)
    except ValueError as err:
        print(f"medattn bench blocks: error: {err}", file=sys.stderr)
        return 2
    with _torch_threads(args.threads):
        results = collect(stages, block_specs, settings, device, show_progress=not args.no_progress)
        results["machine"] = machine_description(device, results.pop("load_before"))
    results["command"] = command_line(args, settings)
    results["settings"] = settings
    text = format_markdown(results)
    print(text)
    if args.markdown:
        from medattn.data.io import write_text_atomic

        write_text_atomic(args.markdown, text + "\n")
    if args.json:
        from medattn.data.io import write_json_atomic

        write_json_atomic(args.json, results)
    return 0


def _stage_specs(settings: dict) -> list[StageSpec]:
    specs = []
    if 2 in settings["dims"]:
        specs += resnet50_stages(settings["image_size"], settings["stages_2d"])
    if 3 in settings["dims"]:
        specs += nnunet_stages(settings["patch_size"], settings["stages_3d"])
    return specs


def _device(name: str):
    """The device to measure on: CPU or CUDA only (the memory profile needs one of them)."""
    import torch

    from medattn.devices import resolve_device

    device = resolve_device(name)
    if device.type in ("cpu", "cuda"):
        return device
    if name == "auto":  # Apple MPS: measure on the CPU rather than refuse
        return torch.device("cpu")
    raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")


def _check_block_options(block_specs: list[BlockSpec]) -> None:
    """Build every block once on a small shape so that a bad option fails before the long run."""
    from medattn import blocks
    from medattn.blocks.dia import create_unit

    for block in block_specs:
        try:
            if block.kind == "dia":
                create_unit(block.name, 32, spatial_dims=2, num_blocks=2, **block.kwargs)
            else:
                blocks.create(block.name, 32, spatial_dims=2, **block.kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--blocks {block.label!r}: {err}") from None


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run with ``threads`` intra-op threads and restore the previous count afterwards
    (``medattn.cli.main`` may be called inside a longer-lived process, e.g. by tests)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def collect(stages: list[StageSpec], block_specs: list[BlockSpec], settings: dict, device,
            show_progress: bool = True) -> dict:
    """Run every section; returns the records by section."""
    import os

    from tqdm.auto import tqdm

    load_before = os.getloadavg()
    n_modules = 1 + len(block_specs)
    rounds = settings["warmup"] + settings["repeats"]
    total = len(stages) * (n_modules * (1 + rounds) + 2 * (1 + len(settings["power_iters"])) * rounds)
    if settings["networks"]:
        total += len(resnet50_variants()) * (1 + (3 if settings["compile"] else 2) * rounds)
    results = {"load_before": load_before, "stages": [], "blocks": [], "dia": [], "power_iteration": [],
               "networks": []}
    with tqdm(total=total, desc="bench blocks", unit="step", disable=not show_progress) as progress:
        for spec in stages:
            progress.set_description(spec.label)
            measured = bench_stage(spec, block_specs, settings, device, progress)
            results["stages"].append(measured["stage"])
            results["blocks"] += measured["blocks"]
            results["dia"] += measured["dia"]
            results["power_iteration"] += bench_power_iteration(spec, measured["maps"], settings, device, progress)
        if settings["networks"]:
            progress.set_description(f"ResNet-50 networks {settings['image_size']}²")
            results["networks"] = bench_networks(settings, device, progress)
    return results


def machine_description(device, load_before) -> dict:
    """CPU model, cores, torch version and threads, device, and the load average around the run."""
    import os
    import platform

    import torch

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def command_line(args, settings: dict) -> str:
    """The command that reproduces this run, with every choice spelled out."""
    import shlex

    parts = ["medattn", "bench", "blocks", "--dims", *map(str, settings["dims"]),
             "--blocks", *args.blocks, "--batch", str(settings["batch"])]
    if 2 in settings["dims"]:
        parts += ["--image-size", str(settings["image_size"])]
        if settings["stages_2d"] is not None:
            parts += ["--stages-2d", *map(str, settings["stages_2d"])]
    if 3 in settings["dims"]:
        parts += ["--patch-size", str(settings["patch_size"])]
        if settings["stages_3d"] is not None:
            parts += ["--stages-3d", *map(str, settings["stages_3d"])]
    parts += ["--repeats", str(settings["repeats"]), "--warmup", str(settings["warmup"]),
              "--power-iters", *map(str, settings["power_iters"]),
              "--networks" if settings["networks"] else "--no-networks", "--seed", str(settings["seed"])]
    if not settings["memory"]:
        parts.append("--no-memory")
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.device != "auto":
        parts += ["--device", args.device]
    return shlex.join(parts)


def format_markdown(results: dict) -> str:
    """All tables as Markdown, preceded by the machine and the command."""
    machine = results["machine"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cpus_available']} of {machine['cpu_count']} CPUs available, "
        f"device {machine['device']}, torch {machine['torch']} with {machine['torch_threads']} threads; "
        f"load average {_load(machine['load_average_before'])} before, {_load(machine['load_average_after'])} after.",
        "",
        f"Command: `{results['command']}`",
    ]
    lines += ["", "**Blocks beside their stage** (block alone on the stage's output; ratios = block / stage; "
              "latency = fastest forward+backward round; memory = peak above the step's start)", ""]
    lines += _blocks_table(results["stages"], results["blocks"])
    if results["dia"]:
        lines += ["", "**DIA units shared by the blocks of a stage** (stage with the unit vs the same stage "
                  "without; added = with − without)", ""]
        lines += _dia_table(results["stages"], results["dia"])
    if results["power_iteration"]:
        lines += ["", "**Power iteration (SNA) vs torch.linalg.svd** on channel-mean maps (float32, no autograd; "
                  "errors against float64 SVD over all matrices: max (median))", ""]
        lines += _power_table(results["power_iteration"])
    if results["networks"]:
        from medattn.pipelines.bench_image import goal_table

        lines += ["", "**Whole ResNet-50 networks** (ratios against the stock network, measured side by side)", ""]
        lines += _networks_table(results["networks"])
        compiled = "inference_time_compiled_s" in results["networks"][0]
        lines += ["", "**Goals** (issue 15; ratios of the fastest rounds, against the stock network)", "",
                  goal_table(network_goal_rows(results["networks"]), NETWORK_GOALS, compiled).rstrip("\n")]
    return "\n".join(lines)


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header))] + [_row(r) for r in rows]


def _blocks_table(stages: list[dict], block_records: list[dict]) -> list[str]:
    header = ["stage (output)", "module", "params", "×stage", "fwd FLOPs", "×stage", "fwd+bwd ms", "×stage",
              "peak MiB", "×stage"]
    rows = []
    for stage in stages:
        rows.append([stage["stage"], f"**stage** ({stage['num_blocks']} blocks)", _count(stage["params"]), "",
                     _flops(stage["flops_forward"]), "", _ms(stage["time_s"]), "",
                     _mib(stage["peak_memory_bytes"]), ""])
        for record in block_records:
            if record["stage"] != stage["stage"]:
                continue
            ratio = record["vs_stage"]
            rows.append(["", record["block"], _count(record["params"]), _pct(ratio["params"]),
                         _flops(record["flops_forward"]), _pct(ratio["flops_forward"]), _ms(record["time_s"]),
                         _pct(ratio["time_s"]), _mib(record["peak_memory_bytes"]), _pct(ratio["peak_memory_bytes"])])
    return _table(header, rows)


def _dia_table(stages: list[dict], dia_records: list[dict]) -> list[str]:
    header = ["stage (output)", "unit", "blocks", "params added", "×stage", "FLOPs added", "×stage",
              "stage ms", "with unit ms", "time added", "peak MiB with / without"]
    times = {s["stage"]: s for s in stages}
    rows = []
    for record in dia_records:
        stage = times[record["stage"]]
        with_unit, added, ratio = record["with_unit"], record["added"], record["vs_stage"]
        rows.append([record["stage"], record["unit"], str(record["num_blocks"]), _count(added["params"]),
                     _pct(ratio["params"]), _flops(added["flops_forward"]), _pct(ratio["flops_forward"]),
                     _ms(stage["time_s"]), _ms(with_unit["time_s"]), _pct(ratio["time_s"], signed=True),
                     f"{_mib(with_unit['peak_memory_bytes'])} / {_mib(stage['peak_memory_bytes'])}"])
    return _table(header, rows)


def _power_table(records: list[dict]) -> list[str]:
    header = ["stage (maps)", "source", "matrices", "iterations", "power ms", "svd ms", "svd / power",
              "σ₁ rel. error", "angle u₁ (°)", "angle v₁ (°)"]
    rows = []
    for r in records:
        count, m, n = r["matrices"]
        rows.append([r["stage"], r["source"], f"{count} × {m}×{n}", str(r["n_iter"]), _ms(r["power_time_s"]),
                     _ms(r["svd_time_s"]), f"{r['svd_time_s'] / r['power_time_s']:.2g}×",
                     _max_median(r, "sigma_rel_error", "{:.1e}"), _max_median(r, "angle_u_deg", "{:.2g}"),
                     _max_median(r, "angle_v_deg", "{:.2g}")])
    return _table(header, rows)


def _networks_table(records: list[dict]) -> list[str]:
    compiled = "inference_time_compiled_s" in records[0]
    header = ["network", "placement", "params", "×stock", "fwd FLOPs", "×stock", "inference ms", "×stock",
              *(["compiled ms", "×stock"] if compiled else []), "fwd+bwd ms", "×stock", "peak MiB", "paper"]
    rows = []
    for r in records:
        ratio = r["vs_stock"]
        extra = [_ms(r["inference_time_compiled_s"]), _x(ratio["inference_time_compiled_s"])] if compiled else []
        rows.append([r["network"], r["placement"], _count(r["params"]), _x(ratio["params"]),
                     _flops(r["flops_forward"]), _x(ratio["flops_forward"]), _ms(r["inference_time_s"]),
                     _x(ratio["inference_time_s"]), *extra, _ms(r["time_s"]), _x(ratio["time_s"]),
                     _mib(r["peak_memory_bytes"]), r["paper"]])
    return _table(header, rows)


def _max_median(record: dict, key: str, fmt: str) -> str:
    return f"{fmt.format(record[key + '_max'])} ({fmt.format(record[key + '_median'])})"


def _count(n: int) -> str:
    if abs(n) < 1000:
        return str(n)
    return f"{n / 1e3:.1f}k" if abs(n) < 1e6 else f"{n / 1e6:.2f}M"


def _flops(n: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if abs(ms) < 100 else f"{ms:.0f}"


def _mib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _pct(ratio, signed: bool = False) -> str:
    if ratio is None:
        return "n/a"
    percent = 100 * ratio
    text = f"{percent:.2g}%" if abs(percent) < 10 else f"{percent:.0f}%"
    return ("+" + text) if signed and percent >= 0 else text


def _x(ratio) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}"
