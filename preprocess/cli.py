"""``medattn convert``: data converters (Synapse/BTCV, TransUNet, DICOM).

Only ``argparse`` is imported here; the converters (SimpleITK, h5py, numpy) load inside
the handlers so ``medattn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

_EPILOG_GROUP = """\
examples:
  medattn convert synapse --src RawData --out $nnUNet_raw --dataset-id 501 --labels 8
  medattn convert synapse --src RawData --out transunet_data --to transunet
  medattn convert transunet --src data/Synapse --lists TransUNet/lists/lists_Synapse --out $nnUNet_raw
  medattn convert dicom --src series_dir --out ct.nii.gz
"""

_EPILOG_SYNAPSE = """\
The TransUNet split puts cases 1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38 in imagesTs/labelsTs
and the other 18 labelled cases in imagesTr/labelsTr. --labels 8 maps BTCV ids to TransUNet's
order (1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen,
8 stomach); --labels 13 keeps BTCV's ids. Either way evaluate_labels_8organs.json (for
`medattn evaluate --labels`) is written beside dataset.json.

examples:
  medattn convert synapse --src ~/BTCV/RawData --out $nnUNet_raw --dataset-id 501 -j 2
  medattn convert synapse --src ~/BTCV/RawData --out $nnUNet_raw --dataset-id 503 --labels 13 --verify
  medattn convert synapse --src ~/BTCV/RawData --out ~/data/Synapse --to transunet
"""

_EPILOG_TRANSUNET = """\
The TransUNet files store no spacing: without --reference the volumes get --spacing
(default 0.76 0.76 3.0 mm, typical of BTCV) and a warning. Intensities are mapped back from
[0, 1] to clipped Hounsfield units [-125, 275] unless --intensity scaled.

examples:
  medattn convert transunet --src ~/data/Synapse --out $nnUNet_raw --dataset-id 502
  medattn convert transunet --src ~/data/Synapse --lists ~/TransUNet/lists/lists_Synapse \\
      --reference ~/BTCV/RawData --out $nnUNet_raw --verify
"""

_EPILOG_DICOM = """\
examples:
  medattn convert dicom --src patient01/CT --out ct.nii.gz
  medattn convert dicom --src study_dir --list
  medattn convert dicom --src study_dir --series-uid 1.2.840.113619.2.55.3 --out ct.nii.gz
"""


def register(subparsers) -> None:
    """Add the ``convert`` group and its ``synapse``, ``transunet`` and ``dicom`` commands."""
    group = subparsers.add_parser(
        "convert",
        help="convert BTCV/Synapse, TransUNet or DICOM data to nnU-Net raw datasets",
        description="Convert public datasets and clinical DICOM into nnU-Net v2 raw datasets\n"
        "(imagesTr/labelsTr/dataset.json), keeping geometry and writing every file atomically.",
        epilog=_EPILOG_GROUP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.set_defaults(group_parser=group)
    inner = group.add_subparsers(dest="converter", metavar="CONVERTER")
    _add_synapse(inner)
    _add_transunet(inner)
    _add_dicom(inner)
    _add_vindr_cxr(inner)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_common(parser, default_id: int, default_name: str) -> None:
    parser.add_argument("--dataset-id", type=int, default=default_id, help=f"nnU-Net dataset id (default {default_id})")
    parser.add_argument("--dataset-name", default=default_name,
                        help=f"name after DatasetXXX_ (default {default_name})")
    parser.add_argument("--labels", type=int, choices=(8, 13), default=8,
                        help="8: TransUNet's 8 organs; 13: all BTCV labels (default 8)")
    parser.add_argument("-j", "--jobs", type=_positive_int, default=1, help="cases converted at once (default 1)")
    parser.add_argument("--verify", action="store_true",
                        help="afterwards run nnU-Net's --verify_dataset_integrity on the result")


def _add_synapse(inner) -> None:
    parser = inner.add_parser(
        "synapse",
        help="BTCV RawData -> nnU-Net dataset (or TransUNet npz/h5 with --to transunet)",
        description="Convert the BTCV abdomen download (RawData/Training/img/imgXXXX.nii.gz,\n"
        "Training/label/labelXXXX.nii.gz, optional Testing/img) into the nnU-Net v2 raw dataset\n"
        "DatasetXXX_Synapse with TransUNet's split, or export TransUNet's npz/h5 layout.",
        epilog=_EPILOG_SYNAPSE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--src", required=True, help="BTCV RawData folder (or the folder holding RawData)")
    parser.add_argument("--out", required=True,
                        help="nnU-Net raw folder (--to nnunet) or output folder (--to transunet)")
    parser.add_argument("--to", choices=("nnunet", "transunet"), default="nnunet", help="output format (default nnunet)")
    parser.add_argument("--split", choices=("transunet", "all"), default="transunet",
                        help="transunet: 18 train / 12 test (default); all: every labelled case trains")
    parser.add_argument("--skip-unlabelled", action="store_true",
                        help="leave out RawData/Testing/img (unlabelled challenge scans), otherwise put in imagesTs")
    _add_common(parser, 501, "Synapse")
    parser.set_defaults(handler=_run_synapse)


def _add_transunet(inner) -> None:
    parser = inner.add_parser(
        "transunet",
        help="TransUNet's preprocessed Synapse npz/h5 -> nnU-Net dataset",
        description="Restack TransUNet's train_npz/caseXXXX_sliceNNN.npz slices and read its\n"
        "test_vol_h5/caseXXXX.npy.h5 volumes into an nnU-Net v2 raw dataset.",
        epilog=_EPILOG_TRANSUNET,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--src", required=True, help="folder holding train_npz/ and test_vol_h5/")
    parser.add_argument("--out", required=True, help="nnU-Net raw folder")
    parser.add_argument("--lists", help="folder with train.txt and test_vol.txt (default SRC/lists/lists_Synapse)")
    geometry = parser.add_mutually_exclusive_group()
    geometry.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                          help="voxel size in mm to assume (default 0.76 0.76 3.0)")
    geometry.add_argument("--reference", help="BTCV RawData to copy each case's exact geometry from")
    parser.add_argument("--intensity", choices=("hu", "scaled"), default="hu",
                        help="hu: map [0, 1] back to HU [-125, 275] (default); scaled: keep values")
    _add_common(parser, 502, "SynapseTransUNet")
    parser.set_defaults(handler=_run_transunet)


def _add_dicom(inner) -> None:
    parser = inner.add_parser(
        "dicom",
        help="a DICOM series -> one NIfTI volume",
        description="Read one DICOM series with SimpleITK (GDCM; JPEG 2000 and other compressed\n"
        "transfer syntaxes work) and write it as a volume in patient coordinates.",
        epilog=_EPILOG_DICOM,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--src", required=True, help="folder holding the series (searched recursively)")
    parser.add_argument("--out", help="output volume (.nii.gz, .nrrd, .mha); required unless --list")
    parser.add_argument("--series-uid", help="Series Instance UID to convert when the folder holds several")
    parser.add_argument("--list", action="store_true", help="only list the series found and exit")
    parser.add_argument("--allow-missing", action="store_true",
                        help="convert although DICOM files beside the series could not be read (they are named); "
                        "without it such a file is an error, since the volume would lack its slice")
    parser.set_defaults(handler=_run_dicom)


# --------------------------------------------------------------------------- handlers


def _fail(message: str) -> int:
    print(f"medattn convert: error: {message}", file=sys.stderr)
    return 1


def _finish(report, verify: bool) -> int:
    print(report.summary())
    status = 0 if report.ok else 1
    if verify and report.converted:
        status = max(status, _verify(report.output))
    return status


def _verify(folder) -> int:
    import subprocess

    from medattn.preprocess.common import verify_with_nnunet

    print(f"running nnU-Net's dataset integrity check on {folder} ...")
    try:
        result = verify_with_nnunet(folder)
    except (OSError, subprocess.TimeoutExpired) as err:
        return _fail(f"nnU-Net integrity check could not run: {err}")
    for line in result.warnings:
        print(f"nnU-Net: {line}", file=sys.stderr)
    if not result.ok:
        print(result.output[-4000:], file=sys.stderr)
        return _fail(f"nnU-Net's integrity check failed for {folder}")
    print("nnU-Net's integrity check passed")
    return 0


def _run_synapse(args) -> int:
    from medattn.preprocess import synapse, transunet

    try:
        if args.to == "transunet":
            if args.verify:
                print("note: --verify checks nnU-Net datasets; it is skipped with --to transunet", file=sys.stderr)
            report = transunet.export_transunet(
                args.src, args.out, labels=args.labels, split=args.split, jobs=args.jobs
            )
            return _finish(report, verify=False)
        report = synapse.convert_synapse(
            args.src,
            args.out,
            dataset_id=args.dataset_id,
            dataset_name=args.dataset_name,
            labels=args.labels,
            split=args.split,
            include_unlabelled=not args.skip_unlabelled,
            jobs=args.jobs,
        )
    except (ValueError, OSError) as err:
        return _fail(str(err))
    return _finish(report, args.verify)


def _run_transunet(args) -> int:
    from medattn.preprocess import transunet

    try:
        report = transunet.convert_transunet(
            args.src,
            args.out,
            dataset_id=args.dataset_id,
            dataset_name=args.dataset_name,
            lists_dir=args.lists,
            labels=args.labels,
            intensity=args.intensity,
            spacing=tuple(args.spacing) if args.spacing else None,
            reference=args.reference,
            jobs=args.jobs,
        )
    except (ValueError, OSError) as err:
        return _fail(str(err))
    return _finish(report, args.verify)


def _run_dicom(args) -> int:
    from medattn.preprocess import dicom

    try:
        if args.list:
            series = dicom.list_series(args.src)
            for info in series:
                print(info.describe())
            return 0 if series else _fail(f"{args.src}: no DICOM series found")
        if not args.out:
            return _fail("--out is required (or use --list)")
        result = dicom.convert_dicom(args.src, args.out, series_uid=args.series_uid, allow_missing=args.allow_missing)
        for name, why in result.series.skipped:
            print(f"warning: skipped {name}: {why} (--allow-missing)", file=sys.stderr)
    except (ValueError, OSError) as err:
        return _fail(str(err))
    g = result.geometry
    print(
        f"wrote {result.output}: {len(result.series.files)} slices -> size (x, y, z) {tuple(reversed(g.shape))}, "
        f"spacing {tuple(round(s, 4) for s in g.spacing)} mm, {result.dtype}"
    )
    return 0


_EPILOG_VINDR = """examples:
  medattn convert vindr-cxr --src vinbigdata-chest-xray-abnormalities-detection --out vindr_png -j 2
  medattn convert vindr-cxr --src physionet.org/files/vindr-cxr/1.0.0 --out vindr_png --label-policy majority
  medattn convert vindr-cxr --src kaggle --out vindr_512 --resize 512 --boxes wbf --yolo \\
      --split stratified-kfold --folds 5 --nnunet-dataset-id 620 --seg-findings "Cardiomegaly,Pleural effusion"
  medattn convert vindr-cxr --src kaggle --out vindr_sna --split-file teKeys.txt --split-file teKeys_normal.txt
  medattn train image --task multilabel --data vindr_png/labels.csv --preset sna_resnet18 --out runs/cxr

writes under --out:
  images/{train,test}/{image_id}.png   by the DICOM's folder
  labels.csv                           image_id, split (train/val/test), path, No finding + Kaggle 0-13 (0/1)
  annotations/instances_{split}.json   COCO, categories 0-13, [x, y, w, h] in output pixels
  annotations/box_issues.csv           clipped-to-nothing, inverted and same-reader duplicate boxes
  splits.json                          the split and the reader/box policy
  manifest.csv                         per image: transfer syntax, bits, VOI, spacing, lossy, size, scale, pad, error
  yolo/{split}/{image_id}.txt          with --yolo
  nnUNet_raw/DatasetXXX_VinDrCXR/      with --nnunet-dataset-id (2D box masks; later --seg-findings win overlaps)
A rerun (or a run after a kill) skips finished images; --overwrite redoes them. Map predicted
boxes back to DICOM pixels with medattn.preprocess.vindr_cxr.to_original(boxes, image_id, manifest)."""


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_vindr_cxr(inner) -> None:
    parser = inner.add_parser(
        "vindr-cxr",
        help="VinDr-CXR (Kaggle or PhysioNet layout) -> PNGs, multi-label CSV, COCO/YOLO boxes, nnU-Net masks",
        description="Convert the VinDr-CXR chest radiographs: DICOM decoded with pydicom 3, Modality LUT, VOI\n"
        "(LUT, else the first window, else the full range), MONOCHROME1 inverted within the output range;\n"
        "per-reader findings turned into image labels by --label-policy; boxes raw per reader or fused.",
        epilog=_EPILOG_VINDR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--src", required=True, help="the download: train.csv + train/ (Kaggle) or annotations/ + "
                        "train/ (PhysioNet)")
    parser.add_argument("--out", required=True, help="output folder")
    pixels = parser.add_argument_group("pixels")
    pixels.add_argument("--output-bits", type=int, choices=(8, 16), default=8, help="PNG depth (default 8)")
    pixels.add_argument("--resize", type=_positive_int, metavar="N", help="output side N x N (default: original size)")
    pixels.add_argument("--resize-mode", choices=("letterbox", "square"), default="letterbox",
                        help="letterbox: keep the aspect, pad centred (default); square: stretch each axis")
    readers = parser.add_argument_group("readers and boxes")
    readers.add_argument("--label-policy", choices=("any", "majority", "all"), default="any",
                         help="a finding counts when any reader (default, the SNA paper's union), a majority or all "
                         "readers named it; No finding = 1 only when none survives")
    readers.add_argument("--boxes", choices=("raw", "wbf"), default="raw",
                         help="raw: every reader's boxes with rad_id (default); wbf: weighted boxes fusion, readers "
                         "as separate models, with each box's reader agreement")
    readers.add_argument("--wbf-iou", type=float, default=0.4, help="WBF clustering IoU (default 0.4)")
    readers.add_argument("--exclude-readers", type=_comma_list, default=(), metavar="R8,R9",
                         help="reader ids left out of labels and boxes")
    splits = parser.add_argument_group("splits")
    splits.add_argument("--split", choices=("kaggle", "stratified-kfold"), default="kaggle",
                        help="kaggle: the train/ and test/ folders (default); stratified-kfold: also multi-label "
                        "stratified folds of the training images, fold --val-fold as labels.csv's val")
    splits.add_argument("--folds", type=_positive_int, default=5, help="folds of stratified-kfold (default 5)")
    splits.add_argument("--val-fold", type=int, default=0, help="the fold written as val (default 0)")
    splits.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    splits.add_argument("--split-file", action="append", default=[], metavar="FILE",
                        help="image ids (one per line) forming the test set instead of test/; repeatable (the SNA "
                        "paper's teKeys.txt and teKeys_normal.txt)")
    targets = parser.add_argument_group("more targets")
    targets.add_argument("--yolo", action="store_true", help="also write yolo/{split}/{image_id}.txt")
    targets.add_argument("--nnunet-dataset-id", type=int, metavar="N", help="also write a 2D nnU-Net dataset of box "
                         "masks as nnUNet_raw/DatasetN_VinDrCXR (needs --seg-findings)")
    targets.add_argument("--seg-findings", type=_comma_list,
                         default=(), metavar="NAMES", help='findings to segment, e.g. "Cardiomegaly,Pleural effusion"')
    parser.add_argument("--overwrite", action="store_true", help="convert images whose PNG exists already")
    parser.add_argument("-j", "--jobs", type=_positive_int, default=2, help="images converted at once, in worker processes (default 2)")
    parser.set_defaults(handler=_run_vindr_cxr)


def _run_vindr_cxr(args) -> int:
    from medattn.preprocess.vindr_cxr import ConvertOptions, convert_vindr_cxr

    try:
        options = ConvertOptions(
            jobs=args.jobs, label_policy=args.label_policy, output_bits=args.output_bits, resize=args.resize,
            resize_mode=args.resize_mode, boxes=args.boxes, wbf_iou=args.wbf_iou, exclude_readers=args.exclude_readers,
            split=args.split, folds=args.folds, val_fold=args.val_fold, seed=args.seed,
            split_files=tuple(args.split_file), yolo=args.yolo, nnunet_dataset_id=args.nnunet_dataset_id,
            seg_findings=args.seg_findings, overwrite=args.overwrite)
        report = convert_vindr_cxr(args.src, args.out, options)
    except (ValueError, OSError) as err:
        return _fail(str(err))
    print(report.summary())
    return 0 if report.ok else 1
