"""``medattn explain``: attention maps and Grad-CAM as NIfTI aligned with the input, PNG and index.html.

Only ``argparse`` is imported at module level.
"""

from __future__ import annotations

import argparse
import sys

from medattn.devices import add_device_argument

_EPILOG = """examples:
  # every attached block of a DynUNet with SNA, on two volumes
  medattn explain --model runs/hippo_sna/checkpoint_best.pt --input imagesTs --out explain_sna

  # DSM only, and Grad-CAM of class 1 at the deepest encoder stage, without mirroring
  medattn explain --model runs/hippo_dsm --input case_001.nii.gz --out explain_dsm --blocks dsm --gradcam 1 --no-tta

  # an nnU-Net model folder (every fold, averaged as the prediction averages them)
  medattn explain --model $nnUNet_results/Dataset990_Phantom/nnUNetTrainerDSM__nnUNetPlans__3d_fullres \
      --input imagesTs --out explain_nnunet --gradcam 1

  # a `medattn train image` classifier: its blocks' maps and Grad-CAM of class index 2
  medattn explain --model runs/cifar_sna --input photos/ --out explain_photos --gradcam 2

  # also each map on its stage's own feature grid
  medattn explain --model runs/hippo_dsm --input imagesTs --out explain_dsm --stage-grids

writes OUT/CASE/BLOCK__MAP.nii.gz (on the input's grid), OUT/CASE/BLOCK__MAP.png,
OUT/CASE/channel_weights.csv and OUT/index.html (and OUT/CASE/BLOCK__MAP__stage.nii.gz
with --stage-grids)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="attention maps and Grad-CAM of a model as NIfTI (aligned with the input), PNG and index.html",
        description="Record what every attached block computes (SNA's weights, DSM's spatial map S and a "
        "per-position summary of its self-attention M, CBAM's spatial gate; channel weights of SE, ECA, DSM's C, "
        "CBAM and DIA's h_t) through forward hooks, stitched over the volume with the prediction's Gaussian "
        "sliding window and resampled to the input grid. Models: nnU-Net model folders (any trainer), checkpoints "
        "of `medattn train monai`, and checkpoints of `medattn train image` (whole images, maps on the picture's "
        "pixel grid).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="an nnU-Net model folder (or one fold_X), a `medattn train monai` or `medattn train "
                        "image` checkpoint (.pt) or its output folder")
    parser.add_argument("--input", "-i", required=True, nargs="+", metavar="DIR_OR_FILE",
                        help="image files or folders (CASE.nii.gz or nnU-Net's CASE_0000.nii.gz; PNG/JPEG for "
                        "image models)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--blocks", nargs="+", metavar="BLOCK",
                        help="block kinds (sna, dsm, cbam, se, eca, dia) or qualified block names (default: all)")
    parser.add_argument("--gradcam", type=int, metavar="CLASS",
                        help="also write Grad-CAM of this class (label value; class index for image models)")
    parser.add_argument("--layer", metavar="NAME",
                        help="module for Grad-CAM (default: the deepest encoder stage above the bottleneck; the "
                        "last ResNet stage for image models)")
    add_device_argument(parser, what="the network")
    parser.add_argument("--no-tta", action="store_true",
                        help="no mirroring (prediction and maps; image models never mirror)")
    parser.add_argument("--stage-grids", action="store_true",
                        help="also write each map on its block's own feature grid (BLOCK__MAP__stage.nii.gz: the "
                        "stage's voxels, in the network's orientation and spacing, aligned in physical space); "
                        "volume models only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def open_explainer(model, device, blocks=None, tta: bool = True, gradcam=None, layer=None, stage_grids=False):
    """The explainer of ``model``: whole volumes for MONAI checkpoints and nnU-Net model
    folders, whole images for ``medattn train image`` checkpoints.

    Raises:
        ValueError: for ``stage_grids`` with an image model (its maps are on the picture's grid).
    """
    from medattn.images.predict import find_image_checkpoint

    image_checkpoint = find_image_checkpoint(model)
    if image_checkpoint is not None:
        from medattn.explain.images import ImageExplainer

        if stage_grids:
            raise ValueError(f"--stage-grids: {image_checkpoint} is an image model; its maps are written on the "
                             "picture's pixel grid only")
        return ImageExplainer(image_checkpoint, device, blocks=blocks, gradcam=gradcam, layer=layer)
    from medattn.explain.volumes import VolumeExplainer

    return VolumeExplainer(model, device, blocks=blocks, tta=tta, gradcam=gradcam, layer=layer,
                           stage_grids=stage_grids)


def run(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from medattn.devices import resolve_device
    from medattn.explain.outputs import write_case, write_index

    try:
        explainer = open_explainer(args.model, resolve_device(args.device), blocks=args.blocks, tta=not args.no_tta,
                                   gradcam=args.gradcam, layer=args.layer, stage_grids=args.stage_grids)
        cases, problems = explainer.cases(args.input)
    except (ValueError, FileNotFoundError) as err:
        print(f"medattn explain: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = [p.message for p in problems]
    entries = []
    for case in tqdm(cases, desc="explain", unit="case", disable=args.no_progress):
        try:
            explanation = explainer.explain(case)
            entries.append(write_case(case.name, explanation, out))
        except ValueError as err:  # CaseError and image read errors name the file
            failures.append(str(err))
            continue
        for note in explanation.notes:
            print(f"medattn explain: {case.name}: {note}", file=sys.stderr)
    index = write_index(entries, out, explainer.description)
    for message in failures:
        print(f"medattn explain: {message}", file=sys.stderr)
    print(f"{len(entries)} case(s) explained; open {index}")
    return 1 if failures else 0
