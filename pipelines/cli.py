"""``medattn demo``: the three user stories end to end on the embedded phantom (``make demo``)."""

from __future__ import annotations

import argparse
import sys

from medattn.devices import add_device_argument

EPILOG = """\
examples:
  medattn demo                          # everything under ./demo_output
  medattn demo --out /scratch/demo      # elsewhere; run it again to reuse what exists

what it runs (the README's user stories, printed before each step): phantom dataset,
nnUNetv2_plan_and_preprocess, nnUNetv2_train with nnUNetTrainerStock_demo and
nnUNetTrainerDSM_demo, medattn predict on the held-out cases, medattn evaluate --compare,
then medattn train monai / predict / evaluate for the MONAI path. Logs of nnU-Net's steps
go to OUT/logs/; finished steps are stamped in OUT/.demo_steps/ and skipped next time.
"""


def register(subparsers) -> None:
    """Add ``demo`` to the ``medattn`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="train, predict and evaluate on a synthetic phantom, end to end (make demo)",
        description="Run the three user stories on the embedded phantom dataset: train stock nnU-Net and "
        "nnU-Net with DSM on a short schedule, predict the held-out cases with medattn predict, compare "
        "them with medattn evaluate --compare, and take the MONAI path; prints the HTML report's path.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo_output", metavar="DIR",
                        help="folder for everything the demo writes (default: ./demo_output)")
    add_device_argument(parser, what="training and prediction")
    parser.add_argument("--schedule", default="demo", choices=("demo", "smoke"),
                        help="demo: the short training schedule (minutes on a CPU); smoke: one epoch of two "
                        "iterations, to check the plumbing (default: demo)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=run, interrupt_hint="finished steps are kept and an interrupted training continues; "
                        "run the same command again")


def run(args) -> int:
    """Handler of ``medattn demo``: 0 on success, 1 when a step fails."""
    import time

    from medattn.pipelines.demo import DemoStepError, run_demo

    started = time.perf_counter()
    try:
        result = run_demo(args.out, schedule=args.schedule, device=args.device, progress=not args.no_progress)
    except DemoStepError as err:
        print(f"medattn demo: step failed: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"medattn demo: error: {err}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min ({len(result.ran)} steps run, {len(result.skipped)} reused) "
          f"in {result.out}")
    print(f"MONAI path report: {result.monai_report}")
    print(f"explain index: {result.explain_index}")
    print(f"report: {result.report}")
    return 0
