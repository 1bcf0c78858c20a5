"""``medattn evaluate``: Dice / HD95 / ASSD of a prediction folder, with reports."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

EXAMPLES = """\
examples:
  # Score nnU-Net predictions; the labels come from $nnUNet_raw/Dataset501_Synapse/dataset.json
  medattn evaluate --pred results/fold0 --gt $nnUNet_raw/Dataset501_Synapse/labelsTs --out eval/fold0

  # Synapse-style: 8 organs named by a dataset.json, TransUNet's conventions and units
  medattn evaluate --pred pred --gt gt --out eval --labels dataset.json \\
      --convention transunet --spacing voxel

  # Inline label map, two models compared case by case, 4 worker processes
  medattn evaluate --pred attention --gt gt --out eval --compare stock \\
      --labels "1=aorta,2=gallbladder,6=liver" -j 4

  # nnU-Net region-based dataset (BraTS): each region is scored on the union of
  # its label values; from its dataset.json or inline ("+" joins the values)
  medattn evaluate --pred pred --gt gt --out eval --labels dataset.json
  medattn evaluate --pred pred --gt gt --out eval \\
      --labels "whole_tumor=1+2+3,tumor_core=2+3,enhancing=3"

  # Sparse annotation: nnU-Net's ignore label marks unannotated ground truth
  medattn evaluate --pred pred --gt gt --out eval --labels "1=liver,2=ignore"

outputs in --out: metrics.csv (one row per case and label or region; the label
column of a region holds its values, e.g. 1+2+3), summary.json, report.md and
report.html (self-contained, box plots embedded); with --compare also
metrics_compare.csv and comparison.csv.

empty-mask conventions (--convention):
  transunet  both empty: Dice 0, HD95 0; prediction empty: Dice 0, HD95 0;
             ground truth empty: Dice 1, HD95 0 (TransUNet's loop)
  nnunet     both empty: NaN (excluded from means); one empty: Dice 0, HD95 NaN
  strict     both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 = image diagonal
"""


def register(subparsers) -> None:
    """Add the ``evaluate`` command to the ``medattn`` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice / HD95 / ASSD of predictions against ground truth, with reports",
        description=textwrap.fill(
            "Score a folder of predicted label images against ground truth, case by case "
            "(paired by file name) and label by label: Dice, HD95 and ASSD (medpy's definitions, in mm "
            "from the image spacing unless --spacing voxel) and the volume difference. Writes "
            "per-case metrics, per-class mean ± std, an optional paired comparison with a second "
            "prediction folder (Wilcoxon signed-rank), and Markdown/HTML reports.",
            width=80,
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", metavar="DIR", help="folder of predicted label images")
    parser.add_argument("--gt", metavar="DIR", help="folder of ground-truth label images")
    parser.add_argument("--out", metavar="DIR", help="folder for the metrics and reports")
    parser.add_argument(
        "--labels",
        metavar="MAP",
        help='label map: a dataset.json-style file ({"labels": {"aorta": 1, ...}}, optional '
        '"evaluate_labels" subset) or inline "1=aorta,2=gallbladder"; nnU-Net regions: '
        '{"labels": {"whole_tumor": [1, 2, 3], ...}, "regions_class_order": [...]} or inline '
        '"whole_tumor=1+2+3,tumor_core=2+3,enhancing=3". An entry named "ignore" '
        '(e.g. "1=liver,2=ignore") is nnU-Net\'s ignore label: the highest value, never scored, '
        "and ground-truth voxels holding it are left out of every metric. Default: the nnU-Net "
        "dataset.json beside --gt when --gt is a dataset's labelsTr/labelsTs folder (so regions and "
        "the ignore label are scored as nnU-Net does), otherwise the non-zero values found in the "
        "ground truth, named label_<k>",
    )
    parser.add_argument(
        "--convention",
        choices=("transunet", "nnunet", "strict"),
        default="nnunet",
        help="scores of empty masks (see below; default: %(default)s)",
    )
    parser.add_argument(
        "--spacing",
        choices=("image", "voxel"),
        default="image",
        help="distances and volumes in mm from the image spacing, or in voxels (default: %(default)s)",
    )
    parser.add_argument(
        "--compare", metavar="DIR", help="second prediction folder, compared case by case with --pred"
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=1, metavar="N", help="worker processes, 0 for all CPUs (default: 1)"
    )
    parser.add_argument(
        "--missing-as-empty",
        action="store_true",
        help="score a missing prediction as an empty mask instead of failing",
    )
    parser.add_argument("--images", metavar="DIR",
                        help="intensity images (CASE.nii.gz or CASE_0000.nii.gz) under the report's case pictures "
                        "(best, median and worst case per class); without it the pictures show the contours alone")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    kinds = parser.add_subparsers(dest="evaluate_kind", metavar="KIND", required=False)
    _add_detection(kinds)
    parser.set_defaults(handler=run, evaluate_parser=parser, interrupt_hint="nothing was written (--out is replaced only as a complete set "
                        "of outputs); run the same command again")


def run(args) -> int:
    """Handler of ``medattn evaluate``; returns the exit code (1 on bad input)."""
    missing = [option for option in ("pred", "gt", "out") if getattr(args, option) is None]
    if missing:  # required here, not in argparse, so that `evaluate detection` needs none of them
        args.evaluate_parser.error("the following arguments are required: " + ", ".join(f"--{m}" for m in missing))
    from medattn.evaluation.api import evaluate_folders
    from medattn.evaluation.report import set_names

    labels = args.labels
    if labels is None:
        labels = dataset_json_beside(args.gt)
        if labels is not None:
            print(f"labels: {labels} (the dataset's own map; --labels chooses another)", file=sys.stderr)
    try:
        result = evaluate_folders(
            args.pred,
            args.gt,
            labels=labels,
            convention=args.convention,
            spacing=args.spacing,
            compare=args.compare,
            jobs=args.jobs,
            missing_as_empty=args.missing_as_empty,
            out_dir=args.out,
            progress=not args.no_progress,
            images=args.images,
        )
    except (ValueError, OSError) as err:
        print(f"medattn evaluate: error: {err}", file=sys.stderr)
        return 1
    for folder, cases in result.summary["missing_scored_as_empty"].items():
        if cases:
            print(f"note: {len(cases)} ground-truth case(s) have no prediction in {folder} and were scored as "
                  f"empty masks (--missing-as-empty): {', '.join(cases[:10])}{' ...' if len(cases) > 10 else ''}",
                  file=sys.stderr)
    for folder, cases in result.summary["unmatched_predictions"].items():
        if cases:
            print(f"note: {len(cases)} prediction(s) in {folder} have no ground truth and were "
                  f"not scored: {', '.join(cases[:10])}{' ...' if len(cases) > 10 else ''}", file=sys.stderr)
    print(_console_table(result, set_names(result.summary)))
    for path in result.written.values():
        print(f"wrote {path}")
    return 0


DETECTION_EXAMPLES = """\
examples:
  # the SNA paper's detection task: VOC AP at IoU 0.4 and the SNA code's hit rate
  medattn evaluate detection --pred results.json --gt vindr/annotations/instances_test.json

  # Kaggle's 15-class convention ("No finding" as a 1 x 1 box), COCO's 101-point AP, a report folder
  medattn evaluate detection --pred results.json --gt instances_test.json --no-finding \\
      --interpolation coco101 --out eval/det

--pred is a COCO results list: [{"image_id": 3 or "<VinDr image id>", "category_id": 8,
"bbox": [x, y, w, h], "score": 0.9}, ...] in the ground truth's pixels. --out gets
detection.csv (one row per class) and summary.json.
"""


def _add_detection(kinds) -> None:
    parser = kinds.add_parser(
        "detection",
        help="box detection: VOC AP at an IoU and the SNA code's hit rate",
        description=textwrap.fill(
            "Score COCO-format box predictions against a COCO ground truth (annotations/instances_test.json "
            "of medattn convert vindr-cxr): per-class and mean average precision at IoU > 0.4, the "
            "competition's PASCAL VOC metric, and the SNA code's per-class hit rate at IoU > 0.4 (a "
            "ground-truth box hit by any same-class detection: a recall, reported as such).", width=80),
        epilog=DETECTION_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", required=True, metavar="FILE", help="COCO results JSON (a list of detections)")
    parser.add_argument("--gt", required=True, metavar="FILE", help="COCO ground truth JSON")
    parser.add_argument("--out", metavar="DIR", help="also write detection.csv and summary.json here")
    parser.add_argument("--iou", type=float, default=0.4, help="IoU a match must exceed (default 0.4)")
    parser.add_argument("--interpolation", choices=("voc", "coco101"), default="voc",
                        help="AP over all recall points (VOC 2010+, default) or 101 points (COCO)")
    parser.add_argument("--no-finding", action="store_true",
                        help='add Kaggle\'s class 14 "No finding": a [0, 0, 1, 1] box on each image without boxes')
    parser.add_argument("--score-threshold", type=float, default=0.05,
                        help="hit rate: detections scoring below are dropped (torchvision's default 0.05)")
    parser.add_argument("--max-detections", type=int, default=100,
                        help="hit rate: the top N detections per image count (default 100)")
    parser.set_defaults(handler=run_detection)


def run_detection(args) -> int:
    """Handler of ``medattn evaluate detection``."""
    from medattn.data.io import json_text, write_set_atomic
    from medattn.evaluation.detection import evaluate_detection

    try:
        report = evaluate_detection(args.pred, args.gt, iou_threshold=args.iou, interpolation=args.interpolation,
                                    no_finding=args.no_finding, score_threshold=args.score_threshold,
                                    max_detections=args.max_detections)
    except (ValueError, OSError) as err:
        print(f"medattn evaluate detection: error: {err}", file=sys.stderr)
        return 1

    def number(value, digits=4):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    header = f"{'class':<22} {'boxes':>6} {'dets':>6} {'AP@' + format(args.iou, 'g'):>8} {'hit rate':>9}"
    lines = [header, "-" * len(header)]
    for row in report.classes:
        lines.append(f"{row['name'][:22]:<22} {row['gt_boxes']:>6} {row['detections']:>6} {number(row['ap']):>8} "
                     f"{number(row['hit_rate']):>9}")
    lines.append(f"{'mean AP / pooled hit rate':<36} {number(report.mean_ap):>8} {number(report.hit_rate_total):>9}")
    print("\n".join(lines))
    print(f"AP: {args.interpolation} interpolation, IoU > {args.iou:g}; hit rate: the SNA code's 'AP', a recall "
          f"(detections scoring >= {args.score_threshold:g}, top {args.max_detections} per image)")
    if args.out:
        import pandas as pd

        csv_text = pd.DataFrame(report.classes).to_csv(index=False, lineterminator="\n")
        for path in write_set_atomic(args.out, {"detection.csv": csv_text,
                                                "summary.json": json_text(report.summary())}).values():
            print(f"wrote {path}")
    return 0


def dataset_json_beside(gt_dir) -> Path | None:
    """``DatasetXXX/dataset.json`` when ``gt_dir`` is that dataset's ``labelsTr`` or
    ``labelsTs`` folder: an nnU-Net dataset's label map belongs to its labels, and without
    it region-based and ignore-label datasets would be scored value by value."""
    gt_dir = Path(gt_dir)
    candidate = gt_dir.parent / "dataset.json"
    if gt_dir.name in ("labelsTr", "labelsTs") and candidate.is_file():
        return candidate
    return None


def _console_table(result, names) -> str:
    unit = result.summary["units"]["distance"]
    lines = [f"{result.summary['n_cases']} cases, convention {result.summary['convention']}, "
             f"distances in {unit}"]
    header = f"{'class':<24} {'Dice':>16} {'HD95':>18}"
    lines += [header, "-" * len(header)]

    def fmt(mean, std, digits):
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")

    for row in result.per_class.to_dict(orient="records"):
        lines.append(f"{row['name'][:24]:<24} {fmt(row['dice_mean'], row['dice_std'], 4):>16} "
                     f"{fmt(row['hd95_mean'], row['hd95_std'], 2):>18}")
    mean = result.mean
    lines.append(f"{'mean':<24} {fmt(mean['dice'], float('nan'), 4):>16} {fmt(mean['hd95'], float('nan'), 2):>18}")
    if result.comparison is not None:
        lines += ["", f"paired comparison {names[0]} vs {names[1]} (mean over classes per case):"]
        for row in result.comparison[result.comparison["label"] == "all"].to_dict(orient="records"):
            lines.append(f"  {row['metric']:<5} A − B = {row['mean_diff']:+.4f}  Wilcoxon p = {row['p_value']:.4g}  "
                         f"A wins/ties/losses {row['wins']}/{row['ties']}/{row['losses']}")
    return "\n".join(lines)
