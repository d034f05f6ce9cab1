"""Copy the DRIVE retinal vessel data set from its download layout into a Decathlon-style ``dataset.json`` layout.

DRIVE (https://drive.grand-challenge.org) unpacks as::

    DRIVE/training/images/21_training.tif          ids 21..40, RGB TIFF 565x584
    DRIVE/training/1st_manual/21_manual1.gif       vessel label, 0/255
    DRIVE/training/mask/21_training_mask.gif       field of view, 0/255
    DRIVE/test/images/01_test.tif                  ids 01..20
    DRIVE/test/1st_manual/01_manual1.gif           only in the full release
    DRIVE/test/mask/01_test_mask.gif

The files keep their names and formats (MONAI's PILReader reads TIFF and GIF) and go to ``imagesTr``, ``labelsTr``,
``masksTr`` and ``imagesTs``, ``labelsTs``, ``masksTs``; ``dataset.json`` is written last.

Command line::

    python bundles/retinal_vessel_unet/scripts/prepare_drive.py --drive_dir /data/DRIVE --output_dir /data/drive_msd
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fire

from common.data import write_prepared

#: DRIVE's split folders and the file-name suffix of their photographs and FOV masks
SPLITS = {"training": ("Tr", "_training"), "test": ("Ts", "_test")}


#: the converted data set's index entries
DATASET = {
    "name": "DRIVE",
    "description": "DRIVE: Digital Retinal Images for Vessel Extraction (40 colour fundus photographs, 565x584).",
    "modality": {"0": "R", "1": "G", "2": "B"},
    "labels": {"0": "background", "1": "vessel"},
}


def _find_root(drive_dir: Path) -> Path:
    """The folder holding ``training/``: ``drive_dir`` itself, or its ``DRIVE`` subfolder as the archive unpacks."""
    if not (drive_dir / "training").is_dir() and (drive_dir / "DRIVE" / "training").is_dir():
        return drive_dir / "DRIVE"
    return drive_dir


def _split_cases(root: Path, split: str) -> list[dict[str, Path]]:
    """Source files of one split, sorted by id: image always, label and mask when present.

    Raises FileNotFoundError when the training photographs are missing or one has no manual label.
    """
    images_dir = root / split / "images"
    suffix = SPLITS[split][1]
    if not images_dir.is_dir():
        if split == "test":
            return []
        raise FileNotFoundError(f"DRIVE: the training images folder {images_dir} does not exist.")
    images = sorted(
        p for p in images_dir.iterdir() if p.stem.endswith(suffix) and p.suffix.lower() in (".tif", ".tiff")
    )
    if split == "training" and not images:
        raise FileNotFoundError(f"DRIVE: no *{suffix}.tif photographs in {images_dir}.")
    cases = []
    for image in images:
        case_id = image.stem[: -len(suffix)]
        case = {"image": image}
        label = root / split / "1st_manual" / f"{case_id}_manual1.gif"
        mask = root / split / "mask" / f"{case_id}{suffix}_mask.gif"
        if label.is_file():
            case["label"] = label
        elif split == "training":
            raise FileNotFoundError(f"DRIVE: the manual label {label} of training image {image.name} is missing.")
        if mask.is_file():
            case["mask"] = mask
        cases.append(case)
    return cases


def _copy_case(case: dict[str, Path], output_dir: Path, tag: str) -> dict[str, str]:
    """Copy one case's files into ``images<tag>``, ``labels<tag>``, ``masks<tag>``; return its data-list entry."""
    entry = {}
    for key, source in case.items():
        relative = f"{key}s{tag}/{source.name}"
        (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, output_dir / relative)
        entry[key] = relative
    return entry


def prepare_drive(drive_dir: str, output_dir: str) -> str:
    """Copy DRIVE into ``output_dir`` with a Decathlon-style ``dataset.json``; return the JSON's path."""
    root = _find_root(Path(drive_dir))
    cases = {split: _split_cases(root, split) for split in SPLITS}  # check everything before copying anything
    copied = {
        split: [_copy_case(case, Path(output_dir), tag) for case in cases[split]] for split, (tag, _) in SPLITS.items()
    }
    return write_prepared(output_dir, DATASET, copied["training"], copied["test"])


if __name__ == "__main__":
    fire.Fire(prepare_drive)
