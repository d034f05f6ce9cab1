"""Pieces every phantom generator uses: smooth random fields, random oblique grids, the data-set writer and the
writer of unlabelled inputs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from common.data import save_nifti, write_dataset_json

#: one case's data-list entry, or several (e.g. one per cardiac phase)
Entries = Union[dict[str, Any], list[dict[str, Any]]]


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | Sequence[float], dtype: Any = np.float64
) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation (Gaussian-filtered white noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(dtype), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix."""
    return Rotation.random(random_state=rng).as_matrix()


def random_affine(spacing: Sequence[float], shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """An oblique voxel-to-world affine (mm): random rotation, sometimes a flipped axis, centred near the origin."""
    rotation = random_rotation(rng)
    if rng.random() < 0.3:
        rotation[:, 0] *= -1  # a left-handed (flipped) voxel grid, as some converters write
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing, float)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2.0) + rng.uniform(-30, 30, 3)
    return affine


def save_pair(root: Path, split: str, name: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> dict:
    """Save a case's image and label NIfTIs as ``images<split>/<name>.nii.gz`` and ``labels<split>/...``; return
    their data-list entry with the subject's name and the grid's orientation code."""
    entry: dict[str, Any] = {}
    for key, data in (("image", image), ("label", label)):
        entry[key] = f"{key}s{split}/{name}.nii.gz"
        save_nifti(data, affine, root / entry[key])
    entry["subject"] = name
    entry["orientation"] = "".join(nib.aff2axcodes(affine))
    return entry


def numbered_cases(write_case: Callable[..., Entries], prefix: str, **options: Any) -> Callable[..., Entries]:
    """A case writer ``(root, split, index, case_seed)`` for ``write_splits``: ``write_case(root, split, name, seed,
    **options)`` with the name ``<prefix><index>`` (three digits)."""

    def write(root: Path, split: str, index: int, case_seed: int) -> Entries:
        return write_case(root, split, f"{prefix}{index:03d}", case_seed, **options)

    return write


def oriented_cases(write_case: Callable[..., Entries], prefix: str, **options: Any) -> Callable[..., Entries]:
    """A case writer ``(root, split, index, case_seed)`` for ``write_splits``: ``write_case(root, split, name, seed,
    orientation=..., **options)`` with the name ``<prefix>_<index>`` and every other case LPS-ordered, as DICOM
    converters store them (the others RAS, as NIfTI tools do)."""

    def write(root: Path, split: str, index: int, case_seed: int) -> Entries:
        orientation = "RAS" if index % 2 == 0 else "LPS"
        return write_case(root, split, f"{prefix}_{index:03d}", case_seed, orientation=orientation, **options)

    return write


def write_splits(
    output_dir: str | Path,
    num_train: int,
    num_test: int,
    seed: int,
    write_case: Callable[[Path, str, int, int], Entries],
    name: str,
    description: str,
    modality: dict[str, str],
    labels: dict[str, str],
    **extra: Any,
) -> str:
    """Write ``num_train`` training and ``num_test`` test cases with ``write_case(root, split, index, case_seed)``
    (split ``Tr`` or ``Ts``; each case's seed derived from ``seed`` and its index), then ``dataset.json`` last;
    return the path of ``dataset.json``."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, Any]]] = {"Tr": [], "Ts": []}
    for index in range(num_train + num_test):
        split = "Tr" if index < num_train else "Ts"
        written = write_case(root, split, index, seed * 100003 + index)
        entries[split] += written if isinstance(written, list) else [written]
    path = write_dataset_json(root, name, description, modality, labels, entries["Tr"], entries["Ts"], **extra)
    print(f"wrote {num_train} training and {num_test} test cases to {root}, index {path}")
    return str(path)


def write_images(folder: str | Path, count: int, seed: int, write_case: Callable[..., Entries]) -> list[Path]:
    """Write ``count`` cases with ``write_case(root, "Ts", index, case_seed)`` (the case writer of ``write_splits``;
    case seed ``seed + index``) into a hidden
    temporary folder next to ``folder``, move their images (``image`` of each entry, a path or a list of paths
    relative to ``root``) into ``folder`` and drop the rest; return the images' paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}_", dir=folder.parent))
    images: list[Path] = []
    try:
        for index in range(count):
            written = write_case(scratch, "Ts", index, seed + index)
            for entry in written if isinstance(written, list) else [written]:
                relatives = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
                for relative in relatives:
                    target = folder / Path(relative).name
                    shutil.move(str(scratch / relative), str(target))
                    images.append(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return images
