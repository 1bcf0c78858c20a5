"""The ``medattn`` command.

Each subcommand lives beside the code it drives, in a ``cli`` module that exposes
``register(subparsers)``. Those modules import only ``argparse`` at top level and load
torch, nnU-Net or MONAI inside their handlers, so ``medattn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown by ``medattn --help``.
COMMAND_MODULES = (
    "medattn.preprocess.cli",  # convert
    "medattn.nnunet.cli",  # nnunet
    "medattn.networks.cli",  # train (monai)
    "medattn.pipelines.cli",  # demo
    "medattn.inference.cli",  # predict
    "medattn.evaluation.cli",  # evaluate
    "medattn.bench",  # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medattn",
        description="Attention blocks (DSM, SNA, DIA) for nnU-Net v2 and MONAI: "
        "data conversion, training, batch inference, evaluation and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # A command whose module is not written yet must not break the others.
            if err.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


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
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
