"""VinDr-CXR targets beyond labels and COCO: splits, YOLO labels and an nnU-Net 2D dataset.

Part of ``medattn convert vindr-cxr`` (:mod:`medattn.preprocess.vindr_cxr`).

* **Splits** (:func:`assign_splits`): the test set is Kaggle's/PhysioNet's ``test/`` folder
  (``kaggle``), or the image ids listed in ``--split-file`` files (one id per line, such as
  the SNA paper's ``teKeys.txt`` and ``teKeys_normal.txt``; every other labelled image is
  training). ``stratified-kfold`` then cuts the training images into ``folds``
  multi-label-stratified folds (iterative-stratification's ``MultilabelStratifiedKFold``,
  seeded, on the 15 labels.csv columns: plain KFold spreads rare classes such as
  Pneumothorax unevenly); fold ``val_fold`` is labels.csv's ``val``. The split is by image:
  VinDr-CXR carries no patient ids. ``splits.json`` records it all.
* **YOLO** (:func:`yolo_lines`): ``class x_centre y_centre width height`` normalised by the
  output image's width (x) and height (y).
* **nnU-Net** (:func:`write_nnunet_dataset`): a 2D dataset of box masks, PNG images
  (nnU-Net's ``NaturalImage2DIO``). Each chosen finding is a label, in ``--seg-findings``
  order (1, 2, ...); **where boxes of two findings overlap, the finding named later wins**
  (list the one to keep visible last). Train-split images go to ``imagesTr``/``labelsTr``,
  the test split to ``imagesTs`` (with ``labelsTs`` when labelled).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from medattn.preprocess.common import ConversionError

__all__ = ["SPLITS", "assign_splits", "read_split_files", "write_nnunet_dataset", "yolo_lines"]

SPLITS = ("kaggle", "stratified-kfold")


def read_split_files(paths, known: set[str]) -> set[str]:
    """The image ids listed in ``paths`` (one per line; blank lines and ``#`` comments skipped).

    Raises:
        ConversionError: naming the file and line of an id that is not an image of the download.
    """
    listed = set()
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConversionError(f"{path}: cannot read the split file ({err})") from err
        for number, line in enumerate(lines, start=1):
            image_id = line.split("#", 1)[0].strip()
            if not image_id:
                continue
            if image_id not in known:
                raise ConversionError(f"{path}, line {number}: {image_id!r} is not an image of the download")
            listed.add(image_id)
    return listed


def assign_splits(folders: dict[str, str], labels: dict[str, list[int]], *, split: str = "kaggle", folds: int = 5,
                  val_fold: int = 0, seed: int = 0, test_ids: set[str] | None = None) -> tuple[dict[str, str], dict]:
    """Each image's role (``train``, ``val``, ``test``) and the ``splits.json`` record.

    Args:
        folders: image_id -> the folder it came from (``train`` or ``test``).
        labels: image_id -> its 15 labels (labelled images only; stratification uses them).
        split: ``kaggle`` (train/test folders) or ``stratified-kfold``.
        folds, val_fold, seed: the k-fold cut of the training images.
        test_ids: the ids of ``--split-file``, which replace the test folder as the test set.

    Raises:
        ValueError: for an unknown split, ``folds`` < 2, ``val_fold`` outside ``0..folds-1``,
            or fewer labelled training images than folds.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if test_ids is None:
        roles = dict(folders)
        source = "the download's train/ and test/ folders"
    else:
        roles = {image_id: "test" if image_id in test_ids else "train" for image_id in folders}
        source = "--split-file (listed ids are test)"
    record = {"split": split, "test_source": source, "seed": seed,
              "test": sorted(i for i, role in roles.items() if role == "test")}
    if split == "kaggle":
        record["train"] = sorted(i for i, role in roles.items() if role == "train")
        return roles, record
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if not 0 <= val_fold < folds:
        raise ValueError(f"--val-fold must be in 0..{folds - 1}, got {val_fold}")
    train = sorted(i for i, role in roles.items() if role == "train" and i in labels)
    if len(train) < folds:
        raise ValueError(f"{len(train)} labelled training image(s) cannot make {folds} folds")
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    cutter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    matrix = np.array([labels[i] for i in train])
    record["folds"] = [{"train": [train[k] for k in fit], "val": [train[k] for k in held]}
                       for fit, held in cutter.split(np.zeros(len(train)), matrix)]
    record["val_fold"] = val_fold
    for image_id in record["folds"][val_fold]["val"]:
        roles[image_id] = "val"
    return roles, record


def yolo_lines(boxes: list[tuple[int, list[float]]], out_width: int, out_height: int) -> str:
    """YOLO label text for ``(class_id, [x, y, w, h])`` boxes in output pixels (COCO order)."""
    lines = []
    for class_id, (x, y, w, h) in boxes:
        lines.append(f"{class_id} {(x + w / 2) / out_width:.6f} {(y + h / 2) / out_height:.6f} "
                     f"{w / out_width:.6f} {h / out_height:.6f}")
    return "".join(line + "\n" for line in lines)


def box_mask(boxes: list[tuple[str, list[float]]], findings: list[str], out_width: int, out_height: int) -> np.ndarray:
    """A uint8 label map: each box of a chosen finding filled with its label, later findings on top.

    A pixel belongs to a box when its centre lies inside it.
    """
    mask = np.zeros((out_height, out_width), dtype=np.uint8)
    for label, finding in enumerate(findings, start=1):
        for name, (x, y, w, h) in boxes:
            if name != finding:
                continue
            x0, x1 = int(np.ceil(x - 0.5)), int(np.ceil(x + w - 0.5))
            y0, y1 = int(np.ceil(y - 0.5)), int(np.ceil(y + h - 0.5))
            mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = label
    return mask


def write_nnunet_dataset(root: Path, dataset_id: int, findings: list[str], images: dict[str, dict],
                         boxes: dict[str, list[tuple[str, list[float]]]], labelled: set[str]) -> Path:
    """Write ``root/DatasetXXX_VinDrCXR`` (module docstring) and return its folder.

    Args:
        root: the ``nnUNet_raw`` folder (``--out``/nnUNet_raw).
        dataset_id: nnU-Net's dataset id.
        findings: the Kaggle class names to segment, in label order.
        images: image_id -> manifest row (``path`` of the PNG, relative to ``root``'s
            parent, ``split``, ``out_width``, ``out_height``).
        boxes: image_id -> ``(class name, [x, y, w, h])`` in output pixels.
        labelled: the images with annotations (unlabelled test images get no label map).
    """
    from PIL import Image

    from medattn.data.io import atomic_write
    from medattn.preprocess.common import dataset_folder, prune_stale_outputs, write_dataset_json

    folder = dataset_folder(root, dataset_id, "VinDrCXR")
    out = root.parent
    written = {name: [] for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for image_id, row in sorted(images.items()):
        training = row["role"] != "test"
        if training and image_id not in labelled:
            continue
        part = "Tr" if training else "Ts"
        image = folder / f"images{part}" / f"{image_id}_0000.png"
        with atomic_write(image, suffix=".png") as tmp:
            shutil.copyfile(out / row["path"], tmp)
        written[f"images{part}"].append(image)
        if image_id in labelled:
            label = folder / f"labels{part}" / f"{image_id}.png"
            mask = box_mask(boxes.get(image_id, []), findings, int(row["out_width"]), int(row["out_height"]))
            with atomic_write(label, suffix=".png") as tmp:
                Image.fromarray(mask).save(tmp, format="PNG")
            written[f"labels{part}"].append(label)
    for name, kept in written.items():
        prune_stale_outputs(folder / name, kept, r".+\.png")
    if not written["imagesTr"]:
        raise ConversionError(f"{folder}: no labelled training image to put in imagesTr")
    from medattn.preprocess.vindr_cxr import safe_name

    write_dataset_json(folder, channel_names={"0": "X-ray"},
                       labels={"background": 0, **{safe_name(name): k for k, name in enumerate(findings, start=1)}},
                       num_training=len(written["imagesTr"]),
                       extra={"file_ending": ".png", "name": "VinDrCXR",
                              "description": "VinDr-CXR box masks by medattn convert vindr-cxr; where boxes of "
                              "two findings overlap, the one later in the label list wins"})
    return folder
