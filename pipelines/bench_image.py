"""``medattn bench image``: the image trainer's overhead and each preset's cost against its stock backbone.

Two tables, measured in one run:

1. Trainer overhead. ``medattn.images.ImageTrainer`` trains ResNet-20 on a 3-class texture
   ImageFolder (scikit-image's brick, grass and gravel, 32x32 crops written to a temporary
   folder) for ``--epochs`` epochs, then a bare PyTorch loop (forward, cross-entropy,
   zero_grad, backward, SGD step over the same kind of DataLoader, model, batch and
   optimizer settings) runs as many, in the same process; this is repeated three times
   (trainer, bare, trainer, bare, ...) so that a drift of the machine's load shows. The table
   gives the median epoch time of each (the first epoch of every run, which pays for
   warm-up, left out) and their ratio (goal: at most 1.03). The trainer's epoch time is its
   own ``train_time_s`` (metrics.csv): the training loop, not validation or checkpoints.
2. Preset cost. Each preset is timed against its stock backbone at the papers' settings
   (ResNet-20 and ResNet-164 at 32x32, ResNet-18 at 32x32 as the SNA paper's CIFAR-100 FPS,
   ResNet-50 at 224x224): a training step (forward, cross-entropy, backward) and an
   inference forward pass, all variants interleaved round by round (times: median of the
   rounds; ratios: median of each round's ratio, so that a drift between rounds cancels).
   Paper anchors: SNA-ResNet-18 on CIFAR-100 217 vs 225 FPS (+3.7 % time); DIA-LSTM on
   ResNet-164 about 12 % slower, the Light variant about 1 %.

3. Goals (issue 15): each preset's ratio against its stock backbone with the limit it should
   stay under, eager and, with ``--compile``, compiled with ``torch.compile`` (both the
   preset and the stock network compiled), with pass/fail. FLOPs come from torch's
   ``FlopCounterMode`` (convolutions and matrix products).

``--quick`` measures ResNet-20 pairs only, with few rounds (for tests).
"""

from __future__ import annotations

import argparse

from medattn.devices import add_device_argument

DESCRIPTION = "image trainer overhead vs a bare loop, and each ResNet preset's cost vs its stock backbone\n\n" + (
    __doc__.split("\n", 1)[1].strip().replace("``", ""))

#: (preset, stock backbone, image size, batch)
PRESET_PAIRS = [
    ("sna_resnet20", "resnet20", 32, 64),
    ("dia_resnet164", "resnet164", 32, 32),
    ("dia_light_resnet164", "resnet164", 32, 32),
    ("sna_resnet18", "resnet18", 32, 64),
    ("sna_resnet50", "resnet50", 224, 4),
    ("dsnet50_a", "resnet50", 224, 4),
    ("dsnet50_b", "resnet50", 224, 4),
    ("se_resnet50", "resnet50", 224, 4),
    ("eca_resnet50", "resnet50", 224, 4),
]
QUICK_PAIRS = [("sna_resnet20", "resnet20", 32, 16)]
#: (preset, measure, limit, what): the performance goals of issue 15, as ratios to the stock network.
GOALS = [
    ("sna_resnet18", "params_added", 0, "SNA adds no parameters"),
    ("sna_resnet18", "infer_ratio", 1.02, "SNA-ResNet-18 at 32², inference"),
    ("sna_resnet50", "infer_ratio", 1.04, "SNA-ResNet-50 at 224², inference"),
    ("dsnet50_a", "flops_ratio", 1.04, "DSNet50-A FLOPs (DSNet Table 5)"),
    ("dsnet50_a", "infer_ratio", 1.05, "DSNet50-A inference"),
    ("dsnet50_b", "infer_ratio", 1.08, "DSNet50-B inference"),
    ("dia_resnet164", "infer_ratio", 1.06, "DIA-LSTM on ResNet-164 at 32², inference"),
    ("dia_light_resnet164", "infer_ratio", 1.015, "DIA-LSTM (Light) on ResNet-164 at 32², inference"),
]
QUICK_GOALS = [("sna_resnet20", "params_added", 0, "SNA adds no parameters"),
               ("sna_resnet20", "infer_ratio", 1.02, "SNA-ResNet-20 at 32², inference (quick run)")]
#: Alternating (trainer, bare loop) runs of the overhead table.
REPEATS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser, default="cpu")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per variant (default: 7)")
    parser.add_argument("--epochs", type=int, default=6, help="alternating epochs for the overhead table (default: 6)")
    parser.add_argument("--quick", action="store_true", help="ResNet-20 pairs only, 3 rounds (for tests)")
    parser.add_argument("--compile", action="store_true",
                        help="also time every network compiled with torch.compile (minutes of compiling on CPU)")
    parser.add_argument("--skip-overhead", action="store_true", help="leave out the trainer-overhead table")
    parser.add_argument("--threads", type=int,
                        help="intra-op threads (default: torch's, one per core); 1 avoids the stalls of threads "
                        "waiting for each other on a shared machine, which make 2-thread ratios swing by 20 %%")
    parser.add_argument("--presets", nargs="+", metavar="PRESET",
                        help=f"measure only these presets (default: all of {[p[0] for p in PRESET_PAIRS]})")
    parser.add_argument("--reference", action="store_true",
                        help="also time each preset with its blocks' impl='reference' (the papers' equations as "
                        "written): the before/after of the fast paths, side by side in the same rounds")
    parser.add_argument("--markdown", help="also write the tables to this file")


def run(args) -> int:
    import os

    from medattn.devices import resolve_device
    from medattn.pipelines.bench_blocks import machine_description

    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    rounds, epochs = (3, 3) if args.quick else (args.rounds, args.epochs)
    if rounds < 1 or epochs < 2:
        raise ValueError(f"--rounds must be at least 1 and --epochs at least 2, got {rounds}, {epochs}")
    load_before = os.getloadavg()
    overhead = None if args.skip_overhead else bench_trainer_overhead(
        device, epochs, batch=16 if args.quick else 32, per_class=32 if args.quick else 128)
    pairs = QUICK_PAIRS if args.quick else PRESET_PAIRS
    if args.presets:
        unknown = sorted(set(args.presets) - {p[0] for p in pairs})
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; choose among {[p[0] for p in pairs]}")
        pairs = [p for p in pairs if p[0] in args.presets]
    presets = bench_presets(pairs, device, rounds, compiled=args.compile,
                            reference=args.reference)
    machine = machine_description(device, load_before)
    text = _markdown(overhead, presets, machine, args) + "\n" + goal_table(presets, QUICK_GOALS if args.quick
                                                                            else GOALS, args.compile)
    print(text)
    if args.markdown:
        from medattn.data.io import write_text_atomic

        write_text_atomic(args.markdown, text)
    return 0


def bench_trainer_overhead(device, epochs: int, batch: int, per_class: int = 128) -> dict:
    """Median epoch seconds of the trainer and of a bare loop, alternating epochs."""
    import csv
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import torch
    from timm.optim import create_optimizer_v2

    from medattn.images import samples
    from medattn.images.data import ImageDataset, build_transforms, channel_statistics, discover
    from medattn.images.models import ModelConfig, build_model
    from medattn.images.training import ImageTrainConfig, ImageTrainer

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        samples.make_textures(work / "data", counts=(("train", per_class), ("val", 16)))
        settings = dict(task="classification", data=str(work / "data"), out=str(work / "run"), preset="resnet20",
                        epochs=epochs, batch_size=batch, lr=0.05, device=str(device), progress=False)
        found = discover("classification", work / "data")
        mean, std = channel_statistics(found.train, found.channels)
        dataset = ImageDataset(found.train, "classification", build_transforms("classification", True, 32, mean, std,
                                                                                "pad"), found.channels)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
        model = build_model(ModelConfig("classification", "resnet20", None, 3, found.channels)).to(device)
        optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, weight_decay=1e-4, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        trainer_s, bare_s = [], []
        for repeat in range(REPEATS):
            ImageTrainer(ImageTrainConfig(**dict(settings, out=str(work / f"run{repeat}")))).run()
            rows = list(csv.DictReader((work / f"run{repeat}" / "metrics.csv").open()))
            trainer_s += [float(row["train_time_s"]) for row in rows][1:]
            for epoch in range(epochs):
                model.train()
                started = time.perf_counter()
                for images, targets in loader:
                    images, targets = images.to(device), targets.to(device)
                    loss = loss_fn(model(images), targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss.item()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if epoch:
                    bare_s.append(time.perf_counter() - started)
    trainer, bare = statistics.median(trainer_s), statistics.median(bare_s)
    return {"trainer_s": trainer, "bare_s": bare, "ratio": trainer / bare, "epochs": epochs, "batch": batch,
            "samples": len(dataset), "trainer_samples_s": trainer_s, "bare_samples_s": bare_s}


def bench_presets(pairs, device, rounds: int, compiled: bool = False, reference: bool = False) -> list[dict]:
    """Training-step and inference time of each preset and its stock backbone, interleaved
    (with ``compiled``, also of their ``torch.compile`` forms; with ``reference``, also of
    the preset built with ``impl="reference"``), and their forward FLOPs."""
    import statistics

    import torch
    from tqdm.auto import tqdm

    from medattn.pipelines.bench_blocks import time_interleaved

    networks, shapes = {}, {}
    for preset, stock, size, batch in pairs:
        for name in (stock, preset) + ((f"{preset}:reference",) if reference and _has_reference(preset) else ()):
            key = (name, size, batch)
            if key not in networks:
                torch.manual_seed(0)
                networks[key] = _network(name, 100 if size == 32 else 1000).to(device)
                shapes[key] = torch.randn(batch, 3, size, size, device=device)
    steps, flops = {}, {}
    for key, network in networks.items():
        x = shapes[key]
        target = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        steps[("train",) + key] = _train_step(network, x, target)
        steps[("infer",) + key] = _infer_step(network, x)
        flops[key] = _forward_flops(network, x)
        if compiled:
            fast = torch.compile(network)
            steps[("train_compiled",) + key] = _train_step(fast, x, target)
            steps[("infer_compiled",) + key] = _infer_step(fast, x)
    with tqdm(total=len(steps) * (rounds + 1), desc="bench image", unit="step", leave=False) as bar:
        samples = time_interleaved(steps, rounds, 1, device, bar)
    median = {key: statistics.median(values) for key, values in samples.items()}
    rows = []
    for preset, stock, size, batch in pairs:
        params = {n: sum(p.numel() for p in networks[(n, size, batch)].parameters()) for n in (preset, stock)}
        row = {"preset": preset, "stock": stock, "size": size, "batch": batch,
               "params_added": params[preset] - params[stock],
               "flops_ratio": flops[(preset, size, batch)] / flops[(stock, size, batch)]}
        for kind in ("train", "infer") + (("train_compiled", "infer_compiled") if compiled else ()):
            ours, base = median[(kind, preset, size, batch)], median[(kind, stock, size, batch)]
            row[f"{kind}_s"], row[f"{kind}_stock_s"] = ours, base
            row[f"{kind}_ratio"] = _paired_ratio(samples[(kind, preset, size, batch)], samples[(kind, stock, size, batch)])
            if reference and (kind, f"{preset}:reference", size, batch) in median:
                row[f"{kind}_reference_ratio"] = _paired_ratio(samples[(kind, f"{preset}:reference", size, batch)],
                                                               samples[(kind, stock, size, batch)])
        rows.append(row)
    return rows


#: Blocks with ``impl="fast"|"reference"`` (the others have one implementation).
BLOCKS_WITH_REFERENCE = ("dsm", "sna", "dia", "dia_light")


def _has_reference(name: str) -> bool:
    from medattn import placement
    from medattn.images.named_presets import preset

    attention = preset(name).attention
    return attention is not None and placement.parse(attention).block in BLOCKS_WITH_REFERENCE


def _network(name: str, num_classes: int):
    """A preset, a stock backbone, or ``"<preset>:reference"``: the preset with every block's
    ``impl="reference"``."""
    from medattn import images, placement
    from medattn.images.named_presets import preset

    if not name.endswith(":reference"):
        return images.create(name, num_classes=num_classes)
    chosen = preset(name.split(":")[0])
    spec = placement.parse(chosen.attention)
    slow = placement.Placement(spec.block, spec.position, spec.stages, {**spec.options, "impl": "reference"})
    return images.create(chosen.backbone, num_classes=num_classes, attention=slow)


def _paired_ratio(ours: list[float], stock: list[float]) -> float:
    """The median over rounds of each round's ratio: both were timed in the same round,
    seconds apart, so a drift of the machine's speed between rounds cancels in each ratio
    (this machine's speed swings by 20-30 % within minutes)."""
    import statistics

    return statistics.median(a / b for a, b in zip(ours, stock))


def _forward_flops(network, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    network.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(x)
    return counter.get_total_flops()


def goal_table(presets: list[dict], goals, compiled: bool) -> str:
    """The goals as a Markdown table: limit, measured (eager, compiled), pass/fail."""
    rows = {row["preset"]: row for row in presets}
    header = "| goal | limit | measured | pass |" if not compiled else \
        "| goal | limit | eager | pass | compiled | pass |"
    lines = [header, "|---|---|---|---|" + ("---|---|" if compiled else "")]
    for preset, measure, limit, what in goals:
        if preset not in rows:
            continue
        row = rows[preset]
        cells = [f"{what} (`{preset}`)", f"{'≤ ' + format(limit, 'g') + '×' if measure != 'params_added' else '0'}"]
        for suffix in ("",) + (("_compiled",) if compiled else ()):
            # a time ratio has its compiled twin (infer_ratio -> infer_compiled_ratio); FLOPs and
            # parameters are the same compiled or not
            timed = measure.endswith("_ratio") and measure != "flops_ratio"
            key = measure.removesuffix("_ratio") + suffix + "_ratio" if timed else measure
            value = row.get(key)
            if value is None:
                cells += ["—", "—"]
                continue
            text = f"{value:+,}" if measure == "params_added" else f"{value:.3f}×"
            cells += [text, "pass" if value <= limit else "**fail**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _train_step(network, x, target):
    import torch

    def step():
        network.train()
        network.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(network(x), target).backward()

    return step


def _infer_step(network, x):
    import torch

    def step():
        network.eval()
        with torch.inference_mode():
            network(x)

    return step


def _markdown(overhead: dict | None, presets: list[dict], machine: dict, args) -> str:
    command = "medattn bench image" + (" --quick" if args.quick else f" --rounds {args.rounds} --epochs {args.epochs}")
    command += " --compile" * args.compile + " --skip-overhead" * args.skip_overhead + " --reference" * args.reference
    command += (" --presets " + " ".join(args.presets)) if args.presets else ""
    command += f" --threads {args.threads}" if args.threads else ""
    lines = [
        f"`{command} --device {args.device}` on {machine['cpu']} ({machine['cpus_available']} CPUs available, "
        f"torch {machine['torch']}, {machine['torch_threads']} threads, device {machine['device']}); load average "
        f"{machine['load_average_before'][0]} before, {machine['load_average_after'][0]} after.",
        "",
    ]
    if overhead is not None:
        lines += [
            "| trainer epoch (median) | bare loop epoch (median) | ratio | epochs | samples × batch |",
            "|---|---|---|---|---|",
            f"| {overhead['trainer_s']:.3f} s | {overhead['bare_s']:.3f} s | {overhead['ratio']:.3f} | "
            f"{REPEATS} × {overhead['epochs']} (first of each left out) | {overhead['samples']} × {overhead['batch']} |",
            "",
        ]
    lines += [
        "| preset | stock | input | batch | params added | FLOPs | training step | ratio | inference | ratio |"
        + (" compiled training | compiled inference |" if args.compile else "")
        + (" reference impl: training | inference |" if args.reference else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.compile else "")
        + ("---|---|" if args.reference else ""),
    ]
    for row in presets:
        lines.append(
            f"| `{row['preset']}` | `{row['stock']}` | {row['size']}² | {row['batch']} | {row['params_added']:+,} | "
            f"{row['flops_ratio']:.3f}× | "
            f"{row['train_s'] * 1e3:.1f} ms vs {row['train_stock_s'] * 1e3:.1f} | {row['train_ratio']:.3f} | "
            f"{row['infer_s'] * 1e3:.1f} ms vs {row['infer_stock_s'] * 1e3:.1f} | {row['infer_ratio']:.3f} |"
            + (f" {row['train_compiled_ratio']:.3f} | {row['infer_compiled_ratio']:.3f} |" if args.compile else "")
            + ((f" {row['train_reference_ratio']:.3f} | {row['infer_reference_ratio']:.3f} |"
                if "train_reference_ratio" in row else " — | — |") if args.reference else ""))
    return "\n".join(lines) + "\n"
