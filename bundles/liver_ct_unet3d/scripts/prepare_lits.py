"""Convert the LiTS liver tumour CT data set from its download layout into a Decathlon-style ``dataset.json`` layout.

LiTS (Liver Tumor Segmentation Benchmark, ISBI 2017 / MICCAI 2017; Bilic et al., Medical Image Analysis 2023)
unpacks as folders of NIfTI files, e.g.::

    LITS/Training Batch 1/volume-0.nii        ... volume-27.nii         CT in HU (int16 or float), any orientation
    LITS/Training Batch 1/segmentation-0.nii  ... segmentation-27.nii   labels: 0 background, 1 liver, 2 tumour
    LITS/Training Batch 2/volume-28.nii       ... volume-130.nii, segmentation-28.nii ... segmentation-130.nii
    LITS/Test-Data/test-volume-0.nii          ... test-volume-69.nii    the challenge's test CTs, without labels

``lits_dir`` is searched recursively (any folder names, any depth) for ``volume-N``, ``segmentation-N`` and
``test-volume-N`` files ending in ``.nii`` or ``.nii.gz``; anything else (e.g. macOS ``._volume-0.nii`` forks) is
ignored. LiTS's labels are ours, so only the layout changes: ``volume-N`` goes to ``imagesTr/lits_NNN.nii.gz`` and
``segmentation-N`` to ``labelsTr/lits_NNN.nii.gz`` (N zero-padded to three digits, so the names sort by case and
never look like the nnU-Net channel suffix ``_XXXX``; N >= 1000 simply gets more digits); ``test-volume-N`` goes to
``imagesTs/lits_test_NNN.nii.gz``, unlabelled, unless ``include_test=False``. Volumes are copied byte for byte
(``.nii`` files gzip-compressed on the way, the header untouched). Labels are rewritten as uint8 on the volume's
grid (its affine and header geometry), since a LiTS segmentation is voxel-aligned with its volume; a segmentation
whose own affine differs from the volume's by more than 0.01 mm is reported on stdout (and still aligned by voxel).
Entries carry ``subject`` (the output name) and ``lits_id`` (N).

Everything is checked before anything is written, each error naming the file: no LiTS files at all, a volume
without its segmentation or a segmentation without its volume (FileNotFoundError); the same case twice (e.g.
``volume-3.nii`` and ``volume-3.nii.gz``), an unreadable or non-3D file, a segmentation whose shape differs from
its volume's, label values outside 0, 1, 2 (ValueError). Each output file appears complete or not at all, and
``dataset.json`` is written last.

The Medical Segmentation Decathlon's Task03_Liver (the same CTs, 131 training and 70 test cases) already has our
layout (``imagesTr/liver_N.nii.gz``, ``labelsTr/liver_N.nii.gz``, ``dataset.json``): pass its folder as
``dataset_dir`` directly, no conversion needed.

Command line::

    python bundles/liver_ct_unet3d/scripts/prepare_lits.py --lits_dir /data/LITS --output_dir /data/lits_msd
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np

from common.data import write_prepared

LABELS = {"0": "background", "1": "liver", "2": "tumour"}
#: the LiTS file kinds, by file name
PATTERNS = {
    "volume": re.compile(r"^volume-(\d+)\.nii(\.gz)?$"),
    "segmentation": re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$"),
    "test": re.compile(r"^test-volume-(\d+)\.nii(\.gz)?$"),
}
#: largest difference (mm) between a segmentation's affine and its volume's that passes without a note
AFFINE_TOLERANCE_MM = 0.01


#: the converted data set's index entries
DATASET = {
    "name": "LiTS",
    "description": "LiTS: Liver Tumor Segmentation Benchmark (ISBI and MICCAI 2017; Bilic et al., Medical Image "
    "Analysis 2023), contrast-enhanced abdominal CT in HU; labels 0 background, 1 liver, 2 tumour.",
    "modality": {"0": "CT"},
    "tensorImageSize": "3D",
}


def find_lits_files(lits_dir: str | Path) -> dict[str, dict[int, Path]]:
    """Map each kind (``volume``, ``segmentation``, ``test``) to ``{N: path}`` for the LiTS files under ``lits_dir``.

    Raises FileNotFoundError when ``lits_dir`` is not a folder or holds no volume, ValueError when a case appears
    twice.
    """
    root = Path(lits_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"LiTS: {root} is not a folder.")
    found: dict[str, dict[int, Path]] = {kind: {} for kind in PATTERNS}
    for path in sorted(root.rglob("*")):
        for kind, pattern in PATTERNS.items():
            match = pattern.match(path.name)
            if match and path.is_file():
                number = int(match[1])
                if number in found[kind]:
                    raise ValueError(
                        f"LiTS: case {number} appears twice: {found[kind][number]} and {path}; keep one of them."
                    )
                found[kind][number] = path
    if not found["volume"] and not found["test"]:
        raise FileNotFoundError(
            f"LiTS: no volume-N.nii, volume-N.nii.gz or test-volume-N.nii files anywhere under {root}."
        )
    return found


def _load(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only) and check that it holds one 3D volume; ValueError naming it otherwise."""
    try:
        image = nib.load(path)
    except Exception as e:
        raise ValueError(f"LiTS: {path} is not a readable NIfTI file ({e}).") from e
    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ValueError(f"LiTS: {path} has shape {image.shape}, not one 3D volume.")
    return image


def check_labels(data: np.ndarray, path: str | Path = "segmentation") -> np.ndarray:
    """The labels as uint8, after checking that every value is 0, 1 or 2; ValueError naming ``path`` otherwise."""
    data = np.asarray(data)
    bad = (data < 0) | (data > 2)
    if not np.issubdtype(data.dtype, np.integer):
        bad |= data != np.floor(data)  # also NaN
    if bad.any():
        values = np.unique(data[bad])[:5].tolist()
        raise ValueError(f"LiTS: {path} holds label values {values} outside 0 (background), 1 (liver), 2 (tumour).")
    return data.astype(np.uint8)


def _check_case(number: int, volume: Path, segmentation: Path | None) -> dict[str, Any]:
    """Check one case (readable, 3D, equal shapes, labels 0..2); return its files and any note on the affines."""
    image = _load(volume)
    case: dict[str, Any] = {"lits_id": number, "volume": volume, "segmentation": segmentation, "note": None}
    if segmentation is None:
        return case
    label = _load(segmentation)
    if label.shape[:3] != image.shape[:3]:
        raise ValueError(
            f"LiTS: {segmentation} has shape {label.shape[:3]} but {volume} has shape {image.shape[:3]}: a "
            "segmentation must share its volume's grid."
        )
    check_labels(np.asarray(label.dataobj), segmentation)
    difference = float(np.abs(np.asarray(label.affine) - np.asarray(image.affine)).max())
    if difference > AFFINE_TOLERANCE_MM:
        case["note"] = (
            f"LiTS: note: the affine of {segmentation} differs from that of {volume} by up to {difference:.3g} mm; "
            "the label is written on the volume's grid (voxel for voxel)."
        )
    return case


def _atomic(target: Path) -> Path:
    """A hidden temporary path beside ``target``, with the same extension (renamed over it once complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".tmp{os.getpid()}_{target.name}")


def _copy_volume(source: Path, target: Path) -> None:
    """Copy a NIfTI file to a ``.nii.gz`` target byte for byte, gzip-compressing a ``.nii`` source."""
    temporary = _atomic(target)
    if source.name.endswith(".gz"):
        shutil.copy2(source, temporary)
    else:
        with open(source, "rb") as f, gzip.open(temporary, "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g, 16 * 1024 * 1024)
    os.replace(temporary, target)


def _write_label(segmentation: Path, volume: Path, target: Path) -> None:
    """Write a segmentation's labels as uint8 with its volume's affine and header geometry."""
    reference = nib.load(volume)
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    labels = check_labels(np.asarray(nib.load(segmentation).dataobj), segmentation)
    while labels.ndim > 3:
        labels = labels[..., 0]
    nifti = nib.Nifti1Image(labels, reference.affine, header)
    nifti.set_data_dtype(np.uint8)
    temporary = _atomic(target)
    nib.save(nifti, temporary)
    os.replace(temporary, target)


def prepare_lits(lits_dir: str, output_dir: str, include_test: bool = True) -> str:
    """Convert LiTS's volumes and segmentations into ``output_dir`` with a Decathlon-style ``dataset.json``."""
    found = find_lits_files(lits_dir)
    for number, segmentation in found["segmentation"].items():
        if number not in found["volume"]:
            raise FileNotFoundError(
                f"LiTS: {segmentation} has no volume: volume-{number}.nii is missing from {lits_dir}."
            )
    cases = []  # check everything before writing anything
    for number, volume in sorted(found["volume"].items()):
        segmentation = found["segmentation"].get(number)
        if segmentation is None:
            raise FileNotFoundError(
                f"LiTS: {volume} has no segmentation: {volume.parent / f'segmentation-{number}.nii'} is missing."
            )
        cases.append(_check_case(number, volume, segmentation))
    tests = [_check_case(n, path, None) for n, path in sorted(found["test"].items())] if include_test else []
    if not cases and not tests:
        raise FileNotFoundError(f"LiTS: no labelled volume-N files under {lits_dir} (and test volumes left out).")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    training = []
    for case in cases:
        name = f"lits_{case['lits_id']:03d}"
        entry = {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"}
        _copy_volume(case["volume"], out / entry["image"])
        _write_label(case["segmentation"], case["volume"], out / entry["label"])
        if case["note"]:
            print(case["note"])
        training.append({**entry, "subject": name, "lits_id": case["lits_id"]})
    test = []
    for case in tests:
        name = f"lits_test_{case['lits_id']:03d}"
        _copy_volume(case["volume"], out / f"imagesTs/{name}.nii.gz")
        test.append({"image": f"imagesTs/{name}.nii.gz", "subject": name, "lits_id": case["lits_id"]})
    return write_prepared(out, {**DATASET, "labels": LABELS}, training, test)


if __name__ == "__main__":
    fire.Fire(prepare_lits)
