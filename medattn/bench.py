"""``medattn bench``: benchmarks that print measured tables (never timed tests).

Each benchmark lives in ``medattn.pipelines.bench_<name>`` (the repository's
``pipelines/`` folder) and exposes ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

# name -> module; the module is imported only when the benchmark runs or its help is shown.
BENCHMARKS = {
    "blocks": "medattn.pipelines.bench_blocks",
    "evaluate": "medattn.pipelines.bench_evaluate",
    "nnunet": "medattn.pipelines.bench_nnunet",
    "monai": "medattn.pipelines.bench_monai",
    "predict": "medattn.pipelines.bench_predict",
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
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # not written yet
        parser = inner.add_parser(
            name,
            help=module.DESCRIPTION.splitlines()[0],
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(handler=module.run)
