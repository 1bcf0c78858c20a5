"""``medattn train monai``: trains MONAI networks with attention (an engine of ``medattn train``).

Only ``argparse`` is imported at module level; torch and MONAI load inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys

from medattn import placement
from medattn.devices import add_device_argument

NETWORK_NAMES = ("dynunet", "segresnet", "basicunet")

_EPILOG = """examples:
  # DynUNet with DSM on the MSD hippocampus task, patch 40x56x40 (x, y, z after RAS orientation)
  medattn train monai --data ../shared/data/Task04_Hippocampus --network dynunet --attention dsm \\
      --out runs/hippo_dsm --epochs 100 --roi 40,56,40

  # continue it to 150 epochs
  medattn train monai --data ../shared/data/Task04_Hippocampus --out runs/hippo_dsm --epochs 150 --resume

  # SegResNet with DIA-LSTM on an nnU-Net raw dataset, MONAI's own constructor arguments as JSON
  medattn train monai --data nnUNet_raw/Dataset990_Phantom --network segresnet --attention dia \\
      --network-kwargs '{"init_filters": 16, "blocks_down": [1, 2, 2]}' --out runs/phantom_dia

writes out/checkpoint_last.pt (every epoch), out/checkpoint_best.pt, out/metrics.csv and
out/config.json; medattn.networks.load_checkpoint(path) rebuilds the network."""


def register(engines) -> None:
    """Add ``monai`` to the engines of ``medattn train`` (the group lives in medattn.cli)."""
    parser = engines.add_parser(
        "monai",
        help="train a MONAI network (DynUNet, SegResNet, BasicUNet) with DSM/SNA/DIA/... in its encoder",
        description="Train a MONAI network with attention blocks in its encoder stages on a dataset in "
        "nnU-Net raw or MSD layout, with MONAI transforms (RAS orientation, resampling to the median "
        "spacing, CT window [-125, 275] HU or MRI z-score, label-balanced crops, flips), DiceCELoss "
        "(deep supervision for DynUNet), sliding-window validation Dice, a checkpoint after every "
        "epoch and --resume.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=_train_monai)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("data and output")
    io.add_argument("--data", required=True, help="dataset folder: nnU-Net raw (imagesTr/*_0000, labelsTr, "
                    "dataset.json) or MSD (dataset.json with a 'training' list)")
    io.add_argument("--out", required=True, help="output folder for checkpoints, metrics.csv and config.json")
    io.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoint_last.pt "
                    "(network and split are taken from it; --epochs is the new total); starts a new run "
                    "when there is no checkpoint yet")
    io.add_argument("--limit-cases", type=int, default=None, metavar="N",
                    help="use only the first N cases (sorted by id), for quick runs")

    net = parser.add_argument_group("network")
    net.add_argument("--network", choices=NETWORK_NAMES, default="dynunet", help="MONAI network (default: dynunet)")
    net.add_argument("--attention", default=None, type=placement.argument, metavar="SPEC",
                     help=f"{placement.HELP} (default: none)")
    for retired in ("--attention-stages", "--attention-kwargs"):  # now part of --attention
        net.add_argument(retired, default=None, help=argparse.SUPPRESS)
    net.add_argument("--network-kwargs", default={}, type=_json_object, metavar="JSON",
                     help="MONAI constructor arguments as JSON, e.g. '{\"filters\": [32, 64, 128, 256]}'")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=100, help="total epochs, one pass over the training cases each "
                       "(default: 100)")
    train.add_argument("--roi", type=_ints, default=None, metavar="X,Y,Z",
                       help="patch size in RAS axis order, e.g. 96,96,96 (default: median case size after "
                       "resampling, rounded up to a multiple of 8, at most 128)")
    train.add_argument("--spacing", type=_floats, default=None, metavar="X,Y,Z",
                       help="target spacing in mm, RAS order (default: the dataset's median spacing)")
    train.add_argument("--batch-size", type=int, default=2, help="cases per step (default: 2)")
    train.add_argument("--samples-per-case", type=int, default=1, help="crops per case per step (default: 1)")
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                       help="sgd: momentum 0.99, Nesterov (nnU-Net); adamw (default: sgd)")
    train.add_argument("--lr", type=float, default=1e-2, help="initial learning rate, poly decay (default: 0.01)")
    train.add_argument("--weight-decay", type=float, default=3e-5, help="weight decay (default: 3e-5)")
    train.add_argument("--val-fraction", type=float, default=0.2, help="cases held out for validation (default: 0.2)")
    train.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default: 1)")
    train.add_argument("--sw-overlap", type=float, default=0.5, help="sliding-window overlap (default: 0.5)")
    train.add_argument("--seed", type=int, default=0, help="seed of split, initial weights and augmentation")

    system = parser.add_argument_group("system")
    add_device_argument(system, what="training")
    system.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    system.add_argument("--cache-rate", type=float, default=1.0, help="share of preprocessed cases kept in memory")
    system.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    system.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_monai(args) -> int:
    from medattn.networks.training import TrainConfig, Trainer

    for flag, value in (("--attention-stages", args.attention_stages), ("--attention-kwargs", args.attention_kwargs)):
        if value is not None:
            print(f"medattn train monai: error: {flag} is part of --attention now: "
                  "--attention 'dsm@after_conv1:0,1{\"rd_ratio\": 0.25}'", file=sys.stderr)
            return 2
    try:
        config = TrainConfig(
            data=args.data, out=args.out, network=args.network, attention=args.attention,
            network_kwargs=args.network_kwargs, epochs=args.epochs, roi=args.roi, spacing=args.spacing,
            batch_size=args.batch_size, samples_per_case=args.samples_per_case, optimizer=args.optimizer,
            lr=args.lr, weight_decay=args.weight_decay, val_fraction=args.val_fraction, val_every=args.val_every,
            sw_overlap=args.sw_overlap, limit_cases=args.limit_cases, seed=args.seed, device=args.device,
            num_workers=args.num_workers, cache_rate=args.cache_rate, amp=args.amp, resume=args.resume,
            progress=not args.no_progress,
        )
        summary = Trainer(config).run()
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"medattn train monai: error: {cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: medattn train monai --data {args.data} --out {args.out} --resume "
              f"--epochs {args.epochs}", file=sys.stderr)
        return 130
    best = summary["best_mean_dice"]
    print(f"{summary['epochs']} epochs in {summary['out']}; best validation mean Dice "
          f"{best:.4f} at epoch {summary['best_epoch']}" if best == best else f"{summary['epochs']} epochs in {summary['out']}")
    return 0


def _user_error(err: BaseException) -> BaseException | None:
    """The bad-input error behind ``err``: MONAI wraps errors raised inside transforms in
    ``RuntimeError("applying transform ...")``; None when it is a genuine bug."""
    while err is not None:
        if isinstance(err, (ValueError, FileNotFoundError)):
            return err
        err = err.__cause__
    return None


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 96,96,96, got {text!r}") from None
    if len(values) not in (2, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 positive integers, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,1,1.5, got {text!r}") from None
    if len(values) not in (2, 3) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 positive numbers, got {text!r}")
    return values


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value
