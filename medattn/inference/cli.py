"""``medattn predict``: label maps for a folder (or list) of images with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medattn.devices import add_device_argument
from medattn.safe_loading import TRUST_HELP

EXAMPLES = """\
examples:
  # an nnU-Net model trained with any trainer (medattn's are found automatically), all folds
  medattn predict --model $nnUNet_results/Dataset990_Phantom/nnUNetTrainerDSM__nnUNetPlans__3d_fullres \\
      --input $nnUNet_raw/Dataset990_Phantom/imagesTs --output predictions/dsm

  # fold 0 only, on the CPU, without mirroring, keeping class probabilities (CASE.npz, CASE.pkl)
  medattn predict --model MODEL_DIR --folds 0 --device cpu --no-tta --save-probabilities \\
      --input scans/ --output predictions/

  # an nnU-Net cascade: the 3d_lowres model beside it predicts first (into predictions/3d_lowres)
  medattn predict --model $nnUNet_results/Dataset501_Synapse/nnUNetTrainerDSM__nnUNetPlans__3d_cascade_fullres \
      --input scans/ --output predictions/

  # two GPUs: each process predicts every other case into the same folder
  medattn predict --model MODEL_DIR --input scans/ --output pred/ --device cuda:0 --num-parts 2 --part-id 0 &
  medattn predict --model MODEL_DIR --input scans/ --output pred/ --device cuda:1 --num-parts 2 --part-id 1

  # a `medattn train image` run on a labelled test folder: predictions.csv (or label PNGs) + metrics.json
  medattn predict --model runs/sna20 --input textures_test/ --output pred/sna20

  # a MONAI-path checkpoint (medattn train monai), on two files
  medattn predict --model runs/phantom_dsm/checkpoint_best.pt --input a.nii.gz b_0000.nii.gz --output pred/

naming: CASE_0000.nii.gz (+ CASE_0001... for more channels) gives CASE.nii.gz; a plain
CASE.nii.gz keeps its name. Label maps have the input's shape, spacing, origin and
direction. Existing outputs are skipped (the run resumes) unless --overwrite; files are
written atomically. A case that cannot be read is reported and the others go on; the exit
status is 1 when any case failed, with a summary of the failures.
"""


def register(subparsers) -> None:
    """Add ``predict`` to the ``medattn`` parser."""
    parser = subparsers.add_parser(
        "predict",
        help="batch inference: label maps for NIfTI volumes (nnU-Net, MONAI) or image test sets (medattn train image)",
        description="Predict a label map for every case of --input with a trained model: an nnU-Net training "
        "output folder (nnU-Net's predictor: sliding window, Gaussian blending, mirroring TTA, fold ensemble) "
        "or a checkpoint of `medattn train monai` (MONAI's sliding_window_inference with Gaussian blending "
        "and mirroring TTA), or a run of `medattn train image` on a test folder or CSV (predictions.csv or label "
        "PNGs, and metrics.json when the test set is labelled). The model type is detected from --model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="nnU-Net training output folder ({trainer}__{plans}__{configuration}, or one of its "
                        "fold_X folders) or MONAI checkpoint (.pt file or its training output folder)")
    parser.add_argument("--input", "-i", required=True, nargs="+", metavar="DIR_OR_FILE",
                        help="a folder of images and/or image files (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the label maps")
    parser.add_argument("--folds", "-f", nargs="+", type=_fold, metavar="FOLD",
                        help="nnU-Net folds to ensemble, e.g. 0 1 2 3 4 or all (default: every fold with a "
                        "checkpoint)")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help="checkpoint file name: nnU-Net default checkpoint_final.pth (e.g. checkpoint_best.pth); "
                        "MONAI output folder default checkpoint_best.pt")
    add_device_argument(parser, what="prediction")
    parser.add_argument("--no-tta", action="store_true", help="disable mirroring test-time augmentation (faster)")
    parser.add_argument("--step-size", type=_step_size, default=0.5, metavar="S",
                        help="sliding-window step as a fraction of the patch size, in (0, 1]: nnU-Net's -step_size "
                        "(default: 0.5, half-patch overlap; 1 is faster, with no overlap)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write CASE.npz (class probabilities, nnU-Net's format) and CASE.pkl")
    parser.add_argument("--overwrite", action="store_true", help="predict cases whose outputs exist already")
    parser.add_argument("-j", "--jobs", type=_positive, default=2, metavar="N",
                        help="worker threads reading ahead and (as many) writing behind while the device "
                        "predicts (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--previous-stage", metavar="DIR",
                        help="nnU-Net cascade (3d_cascade_fullres) models only: the 3d_lowres model folder, which "
                        "predicts first into OUTPUT/3d_lowres, or a folder of its label maps (nnU-Net's "
                        "-prev_stage_predictions). Default: the model folder {trainer}__{plans}__3d_lowres beside "
                        "--model")
    parser.add_argument("--postprocessing", metavar="PKL",
                        help="nnU-Net models only: apply nnU-Net's postprocessing.pkl (from "
                        "nnUNetv2_find_best_configuration, e.g. in crossval_results_folds_0_1_2_3_4/) to every label "
                        "map, as nnUNetv2_apply_postprocessing does (read without running code from it, see "
                        "--trust-model)")
    parser.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    parser.add_argument("--num-parts", type=_positive, default=1, metavar="N",
                        help="split the cases into N parts and predict one (nnU-Net's -num_parts): run N processes, "
                        "e.g. one per GPU, on the same --output (default: 1)")
    parser.add_argument("--part-id", type=_non_negative, default=0, metavar="I",
                        help="which part this process predicts, 0 .. N-1 (nnU-Net's -part_id; default: 0)")
    parser.set_defaults(handler=run)


def _step_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _fold(text: str):
    if text == "all":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"invalid fold {text!r}: a non-negative integer or 'all'")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a positive integer")
    return value


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a non-negative integer")
    return int(text)


def run(args) -> int:
    """Handler of ``medattn predict``: 0 when every case is predicted or skipped, 1 when any failed,
    2 for an unusable model, input or option."""
    import signal
    import threading

    from medattn.images.predict import find_image_checkpoint
    from medattn.inference.batch import predict

    image_checkpoint = find_image_checkpoint(args.model, args.checkpoint)
    if image_checkpoint is not None:
        return _predict_images(image_checkpoint, args)
    # SIGTERM as an exception, so that half-written temporary files are removed on the way out
    # (signal handlers can only be set from the main thread).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_exit) if main_thread else None
    try:
        report = predict(
            args.model, args.input, args.output, folds=args.folds, checkpoint=args.checkpoint, device=args.device,
            tta=not args.no_tta, step_size=args.step_size, save_probabilities=args.save_probabilities,
            overwrite=args.overwrite, jobs=args.jobs, progress=not args.no_progress, previous_stage=args.previous_stage,
            postprocessing=args.postprocessing, num_parts=args.num_parts, part_id=args.part_id,
            trust_model=args.trust_model,
        )
    except (ValueError, OSError) as err:
        print(f"medattn predict: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = len(list(Path(args.output).glob("*"))) if Path(args.output).is_dir() else 0
        print(f"\nmedattn predict: interrupted; the label maps already in {args.output} are complete ({done} "
              "file(s) there) and no temporary file is left; run the same command again to continue (finished "
              "cases are skipped)", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"model: {report.model}")
    print(f"output: {args.output}")
    print(report.summary(), file=sys.stderr if report.failures else sys.stdout)
    return 0 if report.ok else 1


def _predict_images(checkpoint, args) -> int:
    """A ``medattn train image`` model: predictions.csv or label PNGs, metrics.json when labelled."""
    import json

    from medattn.images.predict import predict_images

    volume_only = {"--folds": args.folds, "--previous-stage": args.previous_stage,
                   "--postprocessing": args.postprocessing, "--save-probabilities": args.save_probabilities,
                   "--num-parts": args.num_parts > 1}
    given = [name for name, value in volume_only.items() if value]
    try:
        if given:
            raise ValueError(f"{', '.join(given)}: not for image models ({checkpoint} is a `medattn train image` "
                             "checkpoint)")
        if len(args.input) != 1:
            raise ValueError("an image model takes one --input: a test folder (ImageFolder, VOC, images/ + "
                             "masks/, or plain images) or a multi-label CSV")
        result = predict_images(checkpoint, args.input[0], args.output, device=args.device,
                                progress=not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"medattn predict: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmedattn predict: interrupted; files in --output are complete; run again to redo", file=sys.stderr)
        return 130
    print(f"model: {checkpoint} ({result['weights']} weights)")
    print(f"predictions: {result['predictions']} ({result['samples']} image(s))")
    if result["metrics"] is not None:
        print(json.dumps(result["metrics"], indent=2))
    return 0


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)
