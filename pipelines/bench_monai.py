"""``medattn bench monai``: DynUNet with attention against plain DynUNet on MSD Task04 (hippocampus).

Every variant (plain first, then each ``--attention``) is trained in this one process by
``medattn.networks.Trainer`` with the same seed, case subset, train/validation split, ROI,
filters, optimizer and number of epochs. Each final checkpoint (``checkpoint_last.pt``,
not the best one, so that validation does not select the epoch) then predicts the
held-out cases in their original space (``medattn.networks.inference.Predictor``), and
``medattn.evaluation.evaluate_folders`` scores Dice and HD95 (mm) per class against the
original label files; each attention variant is also compared case by case with plain
(paired Wilcoxon, from medattn.evaluation).

Speed is measured separately, because training runs one variant after the other and
the load of a shared machine drifts between them: after training, every variant takes
``--timing-steps`` training steps (forward, DiceCELoss over the deep-supervision heads,
backward, AdamW step) on one batch of the training shape, the variants interleaved step by
step in rotating order; the table gives the median wall time per step and its ratio to
plain. The wall and CPU seconds per training epoch (mean over the epochs after the first,
which pays for caching) are listed too, for the record. MONAI's
DynUNet tutorial reached a mean Dice of about 0.89 with full training (1000+ epochs on a
GPU); the default budget here is a CPU-sized fraction of that, so absolute Dice is far
lower and only the side-by-side comparison is meaningful.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medattn.devices import add_device_argument

DESCRIPTION = "DynUNet with attention vs plain on MSD Task04 hippocampus: Dice, HD95, time per epoch\n\n" + (
    __doc__.split("\n", 1)[1].strip().replace("``", "")
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="../shared/data/Task04_Hippocampus",
                        help="MSD Task04 folder (default: ../shared/data/Task04_Hippocampus)")
    parser.add_argument("--work", default="bench_monai_work",
                        help="folder for runs, predictions and reports (default: ./bench_monai_work)")
    parser.add_argument("--attention", nargs="+", default=["dsm"], metavar="SPEC",
                        help="attention variants compared with plain, each a placement "
                        "BLOCK[@POSITION][:STAGES][{JSON}] (default: dsm)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant (default: 6)")
    parser.add_argument("--limit-cases", type=int, default=40,
                        help="cases used, sorted by id, 20%% held out (default: 40; all: 208)")
    parser.add_argument("--filters", default="16,32,64,128", help="DynUNet filters per level (default: 16,32,64,128)")
    parser.add_argument("--roi", default="40,56,40", help="patch size, RAS order (default: 40,56,40, the tutorial's)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw",
                        help="adamw converges faster on a short budget (default: adamw)")
    parser.add_argument("--lr", type=float, default=3e-3, help="initial learning rate (default: 3e-3)")
    parser.add_argument("--batch-size", type=int, default=2, help="cases per step (default: 2)")
    parser.add_argument("--samples-per-case", type=int, default=2, help="crops per case per step (default: 2)")
    add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed shared by every variant (default: 0)")
    parser.add_argument("--timing-steps", type=int, default=15,
                        help="interleaved training steps per variant for the speed ratio (default: 15)")
    parser.add_argument("--steps-only", action="store_true",
                        help="no training: time one training step of every variant against plain DynUNet on "
                        "random data of the training shape, interleaved, with the issue-15 goal table (step time "
                        "<= 1.15x plain) and peak memory; --data is not read")
    parser.add_argument("--markdown", help="also write the table to this file")


def run(args) -> int:
    import time

    from medattn.data.io import write_text_atomic
    from medattn.networks.data import discover_dataset

    data, work = Path(args.data), Path(args.work)
    if args.steps_only:
        return _steps_only(args)
    if not (data / "dataset.json").is_file():
        print(f"bench monai: {data} is not a dataset folder (no dataset.json)")
        return 2
    info = discover_dataset(data)
    filters = [int(v) for v in args.filters.split(",")]
    roi = [int(v) for v in args.roi.split(",")]
    from medattn import placement

    try:
        variants = ["plain"] + [placement.parse(a).to_text() for a in args.attention if placement.parse(a) is not None]
    except ValueError as err:
        print(f"bench monai: --attention: {err}")
        return 2
    started = time.perf_counter()
    runs = {variant: _train_and_predict(variant, args, info, work, filters, roi) for variant in variants}
    split = runs["plain"]["split"]  # the same for every variant, by construction
    _write_ground_truth(info, split["val"], work / "ground_truth")
    step_seconds = interleaved_step_seconds(
        variants, filters, roi, args.batch_size * args.samples_per_case, args.device, args.timing_steps, args.seed,
        in_channels=len(info.channel_names), num_classes=info.num_classes,
    )
    labels = {value: name for value, name in info.labels.items() if value != 0}
    rows = [_table_row(variant, runs[variant], step_seconds, labels, work) for variant in variants]
    text = "\n".join([_header(len(split["train"]), len(split["val"]), args, time.perf_counter() - started),
                      *_table_head(labels), *rows]) + "\n"
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text)
    return 0


#: Goal of issue 15: a DynUNet training step with a block, as a ratio to plain DynUNet.
STEP_GOAL = 1.15


def _steps_only(args) -> int:
    """Interleaved training steps of every variant, the goal table printed (and written)."""
    import torch

    from medattn import placement
    from medattn.data.io import write_text_atomic
    from medattn.networks.builders import create

    filters = [int(v) for v in args.filters.split(",")]
    roi = [int(v) for v in args.roi.split(",")]
    variants = ["plain"] + [placement.parse(a).to_text() for a in args.attention if placement.parse(a) is not None]
    networks = {v: create("dynunet", 3, 1, 3, attention=None if v == "plain" else v, filters=filters, patch_size=roi,
                          spacing=[1.0] * len(roi)) for v in variants}
    batch = args.batch_size * args.samples_per_case
    costs = interleaved_step_costs(networks, (batch, 1, *roi), 3, args.device, args.timing_steps, args.seed)
    base = costs["plain"]
    lines = [f"DynUNet (filters {args.filters}) training step on a random batch {batch} x 1 x {args.roi}, "
             f"{args.timing_steps} interleaved rounds (median), {torch.get_num_threads()} threads", "",
             "| variant | s / step | step ×plain | goal ≤ 1.15 | peak MiB | memory ×plain |", "|---|---|---|---|---|---|"]
    for variant, cost in costs.items():
        ratio = cost["step_s"] / base["step_s"]
        lines.append(f"| {variant} | {cost['step_s']:.3f} | {ratio:.3f} | {'pass' if ratio <= STEP_GOAL else 'fail'} | "
                     f"{cost['peak_bytes'] / 2**20:.0f} | {cost['peak_bytes'] / base['peak_bytes']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text)
    return 0


def _train_and_predict(variant: str, args, info, work, filters, roi) -> dict:
    """Train ``variant`` from scratch, predict its held-out cases with the last checkpoint
    into ``work/predictions/<variant>``; returns its history, split and parameter count."""
    import shutil

    from medattn.data.io import write_image
    from medattn.networks.inference import Predictor
    from medattn.networks.training import TrainConfig, Trainer, read_checkpoint

    from medattn import placement

    folder = variant if variant == "plain" else placement.parse(variant).slug()
    out = work / "runs" / folder
    if out.exists():
        shutil.rmtree(out)  # a benchmark always measures a fresh run
    config = TrainConfig(
        data=str(info.root), out=str(out), network="dynunet", attention=None if variant == "plain" else variant,
        network_kwargs={"filters": filters}, epochs=args.epochs, roi=roi, batch_size=args.batch_size,
        samples_per_case=args.samples_per_case, optimizer=args.optimizer, lr=args.lr,
        val_every=args.epochs, limit_cases=args.limit_cases, seed=args.seed, device=args.device,
    )
    Trainer(config).run()
    checkpoint = read_checkpoint(out / "checkpoint_last.pt")
    predictions = work / "predictions" / folder
    if predictions.exists():
        shutil.rmtree(predictions)
    predictor = Predictor(out / "checkpoint_last.pt", device=args.device)
    by_id = {case.case_id: case for case in info.cases}
    for case_id in checkpoint["split"]["val"]:
        labels, geometry = predictor.predict_case(by_id[case_id].images)
        write_image(labels, geometry, predictions / Path(by_id[case_id].label).name)
    # DynUNet keeps its skip connections twice in the state dict (as skip_layers and as
    # the encoder/decoder modules); counting them once gives the network's real size.
    parameters = sum(v.numel() for k, v in checkpoint["state_dict"].items() if not k.startswith("skip_layers."))
    return {"history": checkpoint["history"], "split": checkpoint["split"], "parameters": parameters}


def _write_ground_truth(info, case_ids, folder) -> None:
    """Copy the held-out reference label files into ``folder`` (emptied first)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    by_id = {case.case_id: case for case in info.cases}
    for case_id in case_ids:
        shutil.copy(by_id[case_id].label, folder / Path(by_id[case_id].label).name)


def _table_head(labels: dict[int, str]) -> list[str]:
    columns = ["variant", "params", *(f"Dice {n}" for n in labels.values()), "mean Dice",
               *(f"HD95 {n} (mm)" for n in labels.values()), "s / step (interleaved median)", "step time ratio",
               "s / epoch wall, CPU", "p (Dice vs plain)"]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _table_row(variant: str, run: dict, step_seconds: dict, labels: dict[int, str], work) -> str:
    """Score ``variant``'s predictions (paired with plain's when it is not plain) and format its row."""
    from medattn.evaluation import evaluate_folders

    from medattn import placement

    folder = variant if variant == "plain" else placement.parse(variant).slug()
    compare = None if variant == "plain" else work / "predictions" / "plain"
    evaluation = evaluate_folders(work / "predictions" / folder, work / "ground_truth", labels=labels,
                                  compare=compare, out_dir=work / "reports" / folder, progress=False)
    per_class = evaluation.per_class.set_index("label")
    dice = [per_class.loc[k, "dice_mean"] for k in labels]
    hd95 = [per_class.loc[k, "hd95_mean"] for k in labels]
    wall, cpu = (_epoch_seconds(run["history"], key) for key in ("train_time_s", "train_cpu_s"))
    p_value = "" if evaluation.comparison is None else _p_values(evaluation.comparison)
    cells = [variant, f"{run['parameters']:,}", *(f"{d:.4f}" for d in dice), f"{sum(dice) / len(dice):.4f}",
             *(f"{h:.2f}" for h in hd95), f"{step_seconds[variant]:.3f}",
             f"{step_seconds[variant] / step_seconds['plain']:.2f}", f"{wall:.0f}, {cpu:.0f}", p_value]
    return "| " + " | ".join(cells) + " |"


def interleaved_step_seconds(variants, filters, roi, batch, device, steps, seed, in_channels: int = 1,
                             num_classes: int = 3) -> dict[str, float]:
    """Median wall seconds of one training step per DynUNet variant ("plain" or a
    placement text), measured by :func:`interleaved_step_costs` on random data."""
    from medattn.networks.builders import create

    networks = {
        variant: create("dynunet", 3, in_channels, num_classes, attention=None if variant == "plain" else variant,
                        filters=filters, patch_size=roi, spacing=[1.0] * len(roi))
        for variant in variants
    }
    costs = interleaved_step_costs(networks, (batch, in_channels, *roi), num_classes, device, steps, seed, memory=False)
    return {variant: cost["step_s"] for variant, cost in costs.items()}


def interleaved_step_costs(networks, input_shape, num_classes: int, device, steps: int, seed: int,
                           memory: bool = True) -> dict[str, dict[str, float]]:
    """Wall seconds (median) and peak memory of one training step per network, side by side.

    A step is forward, DiceCELoss (over DynUNet's stacked deep-supervision heads, or over
    nnU-Net's list of heads), backward and an AdamW step, on one random batch of ``input_shape`` shared by all networks. Each round
    runs one step of every network, in an order rotated from round to round, so that a
    change in the machine's load affects all alike; two warm-up rounds are not timed.
    Peak memory is measured once per network after the timing
    (:func:`medattn.pipelines.bench_blocks.peak_memory_bytes`: above what was allocated
    before the step; on CPU, PyTorch's allocator events).

    Args:
        networks: name to network (moved to ``device`` and set to training mode here).
        input_shape: (B, C, *spatial) of the batch.
        num_classes: classes of the random label map.
        device: a ``--device`` value or torch device.
        steps: timed rounds.
        seed: seed of the random batch.
        memory: also measure the peak memory.

    Returns:
        name to ``{"step_s": median seconds, "peak_bytes": bytes or None}``.
    """
    import statistics
    import time

    import torch
    from monai.losses import DiceCELoss

    from medattn.networks.training import deep_supervision_loss, resolve_device
    from medattn.pipelines.bench_blocks import peak_memory_bytes

    device = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(*input_shape, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (input_shape[0], 1, *input_shape[2:]), generator=generator).float().to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    downsampled = {}

    def loss_of(output):
        if not isinstance(output, (list, tuple)):
            return deep_supervision_loss(output, labels, loss_fn)
        # nnU-Net's deep supervision: one head per decoder level, the label map downsampled
        # to each (nearest), weights 1, 1/2, 1/4, ... normalised, as nnU-Net weighs them.
        weights = [0.5**i for i in range(len(output))]
        total = 0
        for weight, head in zip(weights, output):
            size = tuple(head.shape[2:])
            if size not in downsampled:
                downsampled[size] = torch.nn.functional.interpolate(labels, size=size, mode="nearest")
            total = total + weight * loss_fn(head, downsampled[size])
        return total / sum(weights)

    names = list(networks)
    steps_of = {}
    for name, network in networks.items():
        network.to(device).train()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)

        def step(network=network, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss_of(network(images)).backward()
            optimizer.step()

        steps_of[name] = step
    times = {name: [] for name in names}
    for round_index in range(steps + 2):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            steps_of[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= 2:
                times[name].append(time.perf_counter() - started)
    return {name: {"step_s": statistics.median(times[name]),
                   "peak_bytes": peak_memory_bytes(steps_of[name], device) if memory else None}
            for name in names}


def _epoch_seconds(history, key) -> float:
    times = [row.get(key, float("nan")) for row in history]
    later = times[1:] or times
    return sum(later) / len(later)


def _p_values(comparison) -> str:
    rows = comparison.to_dict(orient="records")
    dice_rows = [r for r in rows if r.get("metric") == "dice"]
    return ", ".join(f"{r.get('name', r.get('label'))} {r.get('p_value', float('nan')):.3f}" for r in dice_rows)


def _header(n_train, n_val, args, seconds) -> str:
    return (f"DynUNet (filters {args.filters}, ROI {args.roi}) on {Path(args.data).name}: {n_train} training / {n_val} "
            f"held-out cases, {args.epochs} epochs, {args.optimizer} lr {args.lr}, batch {args.batch_size} x "
            f"{args.samples_per_case} crops, seed {args.seed}; total wall time {seconds / 60:.1f} min\n")
