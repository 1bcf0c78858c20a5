"""The ``medattn`` command.

Each subcommand lives beside the code it drives, in a ``cli`` module that exposes
``register(subparsers)``. Those modules import only ``argparse`` at top level and load
torch, nnU-Net or MONAI inside their handlers, so ``medattn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: The ``medattn train`` group: its engines, each a ``cli`` module with ``register(engines)``.
TRAIN = "train"
TRAIN_ENGINES = (
    "medattn.networks.cli",  # train monai
    "medattn.images.cli",  # train image
)

# Order is the order shown by ``medattn --help``.
COMMAND_MODULES = (
    "medattn.preprocess.cli",  # convert
    "medattn.nnunet.cli",  # nnunet
    TRAIN,
    "medattn.pipelines.cli",  # demo
    "medattn.inference.cli",  # predict
    "medattn.evaluation.cli",  # evaluate
    "medattn.explain.cli",  # explain
    "medattn.pipelines.bench",  # bench
)


#: What Ctrl-C leaves, for commands that do not say more (``interrupt_hint`` in their defaults).
INTERRUPT_HINT = ("every file written so far is complete (atomic writes) and no temporary file is left; run the "
                  "same command again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medattn",
        description="Attention blocks (DSM, SNA, DIA) for nnU-Net v2 and MONAI: "
        "data conversion, training, batch inference, evaluation and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        if module_name == TRAIN:
            _add_train_group(subparsers)
        else:
            importlib.import_module(module_name).register(subparsers)
    return parser


def _add_train_group(subparsers) -> None:
    group = subparsers.add_parser(
        TRAIN,
        help="train a network with attention (engines: monai, image)",
        description="Train networks with attention blocks. The nnU-Net engine trains through nnU-Net itself "
        "(nnUNetv2_train -tr nnUNetTrainerDSM ..., see `medattn nnunet`); each engine below is a subcommand.",
    )
    group.set_defaults(group_parser=group)
    engines = group.add_subparsers(dest="train_engine", metavar="ENGINE")
    for module_name in TRAIN_ENGINES:
        importlib.import_module(module_name).register(engines)


def _version() -> str:
    from medattn import __version__

    return f"medattn {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group such as ``medattn nnunet`` without its sub-subcommand: show its help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        # One rule for every command: a line saying what is kept and how to go on, exit 130.
        # Commands with more to say (predict, train) catch it themselves.
        name = " ".join(part for part in (args.command, getattr(args, "train_engine", None),
                                          getattr(args, "benchmark", None)) if part)
        print(f"\nmedattn {name}: interrupted; {getattr(args, 'interrupt_hint', INTERRUPT_HINT)}", file=sys.stderr)
        return 130


def console_main() -> None:
    """The ``medattn`` executable (and ``python -m medattn.cli``): :func:`main`, then exit.

    A command stopped by a signal (``medattn predict`` turns SIGTERM into ``SystemExit(143)``
    once its temporary files are removed) leaves through ``os._exit``: a normal interpreter
    exit would run the C++ static destructors of torch and ITK while their worker threads may
    still be joinable, which aborts the process ("terminate called without an active
    exception", exit -6) instead of reporting the signal.
    """
    import os
    import signal

    try:
        code = main()
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.code)
        raise
    sys.exit(code)


if __name__ == "__main__":
    console_main()
