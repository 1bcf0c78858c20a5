"""``medattn train image``: the natural-image trainer (an engine of ``medattn train``).

Only ``argparse`` is imported at module level; torch loads inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys

from medattn.devices import add_device_argument

TASKS = ("classification", "multilabel", "segmentation")

_EPILOG = """examples:
  # SNA-ResNet-20 on an ImageFolder (one sub-folder per class; or train/ and val/ ImageFolders)
  medattn train image --task classification --data textures/ --preset sna_resnet20 --out runs/sna20 --epochs 30

  # continue it to 60 epochs
  medattn train image --task classification --data textures/ --preset sna_resnet20 --out runs/sna20 \\
      --epochs 60 --resume

  # multi-label chest X-rays (CSV: path + one 0/1 column per class), DIA on ResNet-50, bf16, EMA
  medattn train image --task multilabel --data cxr/train.csv --backbone resnet50 --attention dia \\
      --image-size 224 --pos-weight --amp bf16 --ema-decay 0.999 --out runs/cxr_dia

  # segmentation on a VOC-style folder: DeepLabV3 on DSNet50-A, output stride 8, poly schedule
  medattn train image --task segmentation --data VOC2012/ --preset dsnet50_a --head deeplabv3 \\
      --output-stride 8 --image-size 512 --batch-size 8 --out runs/voc_dsnet

  # the papers' way: stock ResNet-20 against SNA-ResNet-20, three seeds each, mean ± std
  medattn train image --task classification --data textures/ --preset resnet20 --compare sna_resnet20 \\
      --seeds 0 1 2 --out runs/study

  # two processes (GPUs with NCCL, CPU with gloo)
  torchrun --nproc_per_node 2 $(which medattn) train image --task classification --data textures/ \\
      --preset resnet20 --out runs/ddp

writes out/checkpoint_last.pt (every epoch), checkpoint_best.pt, metrics.csv, config.json and
summary.json; `medattn predict --model out/ --input TEST --output DIR` predicts a test set
(predictions.csv or label PNGs, and metrics.json when the test set is labelled)."""


def register(engines) -> None:
    """Add ``image`` to the engines of ``medattn train``."""
    parser = engines.add_parser(
        "image",
        help="train a ResNet with DSM/SNA/DIA/... for classification, multi-label or segmentation",
        description="Train a torchvision ResNet (ImageNet or CIFAR style) carrying attention blocks on natural or "
        "X-ray images: classification (ImageFolder), multi-label classification (CSV) or semantic segmentation "
        "(VOC-style folders, FCN/DeepLabV3 heads), with timm's optimizers and schedulers, AMP, EMA, mixup, "
        "torchrun DDP, a checkpoint after every epoch and --resume.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=_train_image)


def _add_arguments(parser) -> None:
    from medattn import placement

    io = parser.add_argument_group("data and output")
    io.add_argument("--task", required=True, choices=TASKS, help="what to learn")
    io.add_argument("--data", required=True, help="ImageFolder (classification), CSV or folder with train.csv "
                    "(multilabel), VOC folder or images/ + masks/ (segmentation)")
    io.add_argument("--out", required=True, help="output folder (checkpoints, metrics.csv, config.json, summary.json)")
    io.add_argument("--resume", action="store_true", help="continue the run in --out (every state is restored; "
                    "--epochs is the new total)")
    io.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                    help="stop once this many epochs are done (time-limited jobs); --resume later continues the same "
                    "schedule exactly")
    io.add_argument("--val-fraction", type=float, default=0.2, help="held-out share when the layout gives no split "
                    "(seeded, recorded in config.json; default: 0.2)")
    io.add_argument("--num-classes", type=int, default=None, help="segmentation: classes with background (default: "
                    "the largest mask value + 1)")

    net = parser.add_argument_group("network")
    choice = net.add_mutually_exclusive_group(required=True)
    choice.add_argument("--preset", help="a named network, e.g. sna_resnet20, dsnet50_a, dia_resnet164, resnet50 "
                        "(python -c 'import medattn.images as i; print(i.presets())')")
    choice.add_argument("--backbone", help="a stock ResNet: resnet18/34/50/101/152 (ImageNet), resnet20/32/44/56/110/164 "
                        "(CIFAR); add blocks with --attention")
    net.add_argument("--attention", default=None, type=placement.argument, metavar="SPEC",
                     help=f"with --backbone: {placement.HELP}")
    net.add_argument("--head", choices=("fcn", "deeplabv3"), default="fcn", help="segmentation head (default: fcn)")
    net.add_argument("--output-stride", type=int, choices=(8,), default=None,
                     help="segmentation: dilate the last two stages (output stride 8; ResNet-50/101/152)")
    net.add_argument("--no-aux-loss", dest="aux_loss", action="store_false", help="segmentation: no auxiliary head")
    net.add_argument("--aux-weight", type=float, default=0.5, help="auxiliary loss weight (default: 0.5)")
    net.add_argument("--pretrained", metavar="FILE", help="local state dict for the backbone (a torchvision "
                     "checkpoint); the inserted blocks are reported as new keys. Nothing is downloaded")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=30, help="total epochs (default: 30)")
    train.add_argument("--batch-size", type=int, default=32, help="samples per step per process (default: 32)")
    train.add_argument("--image-size", type=int, default=None, help="square input side (default: 32 for CIFAR "
                       "backbones, 224 otherwise)")
    train.add_argument("--crop", choices=("pad", "resized"), default=None, help="training crop: pad (4 px + random "
                       "crop, CIFAR) or resized (RandomResizedCrop); default by backbone")
    train.add_argument("--optimizer", default="sgd", help="a timm optimizer: sgd (Nesterov), momentum, adamw, adam, "
                       "lamb, ... (default: sgd)")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.1 SGD, 0.01 SGD "
                       "segmentation, 1e-3 others)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="not applied to norms and biases "
                       "(default: 1e-4)")
    train.add_argument("--sched", choices=("cosine", "step", "poly", "none"), default=None,
                       help="per-iteration schedule (default: cosine; poly (power 0.9) for segmentation)")
    train.add_argument("--warmup-epochs", type=int, default=0, help="linear warmup epochs (default: 0)")
    train.add_argument("--milestones", type=int, nargs="+", default=None, metavar="EPOCH",
                       help="--sched step: epochs where the rate drops 10x (default: 50 %% and 75 %% of --epochs)")
    train.add_argument("--min-lr", type=float, default=0.0, help="floor of cosine and poly (default: 0)")
    train.add_argument("--label-smoothing", type=float, default=0.0, help="classification (default: 0)")
    train.add_argument("--pos-weight", action="store_true", help="multilabel: weight positives by negatives / "
                       "positives per class")
    train.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="classification mixup alpha (timm)")
    train.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="classification CutMix alpha (timm)")
    train.add_argument("--ema-decay", type=float, default=None, metavar="D", help="keep and validate an EMA of the "
                       "weights, e.g. 0.999 (correct for DIA's shared units)")
    train.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision; fp16 uses a "
                       "GradScaler and needs CUDA (default: none)")
    train.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradient norm")
    train.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument("--seed", type=int, default=0, help="seed of split, weights and augmentation (default: 0)")
    train.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="train one run per seed into OUT/<network>/seed_<k>/ and write OUT/comparison.json/.md "
                       "(mean ± std)")
    train.add_argument("--compare", nargs="+", default=[], metavar="NETWORK",
                       help="further networks (presets, or placements for --backbone) trained with the same seeds; "
                       "paired differences against the stock one")
    add_device_argument(train, what="training")
    train.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _train_image(args) -> int:
    from medattn.images.data import ImageDataError

    try:
        config = _config(args)
        if args.seeds or args.compare:
            from medattn.images.study import run_study

            comparison = run_study(config, args.compare, args.seeds or [args.seed])
            print(json.dumps({name: entry["metrics"][comparison["metric"]] for name, entry in
                              comparison["networks"].items()}, indent=2))
            print(f"comparison: {config.out}/comparison.md")
            return 0
        from medattn.images.training import ImageTrainer

        summary = ImageTrainer(config).run()
    except (ImageDataError, ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"medattn train image: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmedattn train image: interrupted; {args.out}/checkpoint_last.pt holds the last finished epoch; "
              "add --resume to continue", file=sys.stderr)
        return 130
    if summary.get("out") and _is_main():
        print(json.dumps({k: v for k, v in summary.items() if k != "out"}, indent=2))
    return 0


def _message(err: Exception) -> str:
    """The error's own words: an error raised in a DataLoader worker arrives with the worker's
    traceback in its message, whose last line is the original ``Class: message``."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _config(args):
    from medattn.images.training import ImageTrainConfig

    attention = None if args.attention is None else args.attention.to_text()
    return ImageTrainConfig(
        task=args.task, data=args.data, out=args.out, preset=args.preset, backbone=args.backbone, attention=attention,
        head=args.head, output_stride=args.output_stride, aux_loss=args.aux_loss, aux_weight=args.aux_weight,
        num_classes=args.num_classes, epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
        crop=args.crop, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        sched=args.sched, warmup_epochs=args.warmup_epochs, milestones=args.milestones, min_lr=args.min_lr,
        label_smoothing=args.label_smoothing, pos_weight=args.pos_weight, mixup=args.mixup, cutmix=args.cutmix,
        ema_decay=args.ema_decay, amp=args.amp, clip_grad=args.clip_grad, channels_last=args.channels_last,
        compile=args.compile, seed=args.seed, device=args.device, workers=args.workers,
        val_fraction=args.val_fraction, pretrained=args.pretrained, resume=args.resume, stop_after=args.stop_after,
        progress=args.progress)
