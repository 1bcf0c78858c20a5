"""``medattn bench``: benchmarks that print measured tables (never timed tests).

Each benchmark is a module ``bench_<name>`` of this folder (installed as
``medattn.pipelines``) and exposes ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``. A ``ValueError`` a benchmark raises for its arguments or data is
printed as an error line with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the module is imported only when the benchmark runs or its help is shown.
BENCHMARKS = {
    "blocks": "medattn.pipelines.bench_blocks",
    "evaluate": "medattn.pipelines.bench_evaluate",
    "nnunet": "medattn.pipelines.bench_nnunet",
    "monai": "medattn.pipelines.bench_monai",
    "predict": "medattn.pipelines.bench_predict",
    "image": "medattn.pipelines.bench_image",
    "vindr": "medattn.pipelines.bench_vindr",
    "study": "medattn.pipelines.bench_study",
}


def register(subparsers) -> None:
    group = subparsers.add_parser(
        "bench",
        help="run a benchmark and print its measured table",
        description="Benchmarks print tables measured side by side in one run; "
        "docs/benchmarks.md holds the committed results and the commands behind them.",
    )
    group.set_defaults(group_parser=group)
    inner = group.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        parser = inner.add_parser(
            name,
            help=module.DESCRIPTION.splitlines()[0],
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(handler=_Handler(name, module.run),
                            interrupt_hint="no table was written; run the same command again")


class _Handler:
    """Runs one benchmark; its argument and data errors become an error line and exit 2."""

    def __init__(self, name: str, run):
        self.name, self.run = name, run

    def __call__(self, args) -> int:
        try:
            return self.run(args)
        except ValueError as err:
            print(f"medattn bench {self.name}: error: {err}", file=sys.stderr)
            return 2
