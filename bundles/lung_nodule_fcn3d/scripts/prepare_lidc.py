"""Convert LIDC-IDRI (chest CT DICOM with up to four radiologists' nodule outlines) into a Decathlon-style layout.

LIDC-IDRI's outlines live in XML files next to the DICOM series; ``pylidc`` (an optional dependency, not installed
with this project: ``pip install pylidc``, then point ``~/.pylidcrc`` at the DICOM folder) parses them into
``Scan`` objects whose ``cluster_annotations()`` groups the readers' outlines by nodule. This script writes, per
scan, the CT in HU and a label map in the same grid:

- ``imagesTr/lidc_NNNN.nii.gz``: ``scan.to_volume()`` (int16 HU), axes transposed to (column, row, slice) so the
  grid is LPS-ordered as DICOM stores it, with the affine of the DICOM geometry (``dicom_affine``);
- ``labelsTr/lidc_NNNN.nii.gz``: 1 where at least ``agreement`` (default 50 %) of the outlines of a nodule mark
  the voxel (``consensus_mask``), for nodules outlined by at least ``min_readers`` readers, else 0 (uint8).

The conversion logic (consensus, affine, label assembly) takes plain objects with pylidc's two methods
(``bbox()`` giving the outline's slices into the volume, ``boolean_mask()`` giving its mask in that box), so it is
tested without pylidc. The Medical Segmentation Decathlon's Task06_Lung (LIDC-derived, labels 0/1) already has our
layout: pass its folder as ``dataset_dir`` directly.

Command line::

    python bundles/lung_nodule_fcn3d/scripts/prepare_lidc.py --output_dir data/lidc [--max_scans 20]
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import fire
import nibabel as nib
import numpy as np

from common.data import write_prepared

LABELS = {"0": "background", "1": "nodule"}
MISSING_PYLIDC = (
    "prepare_lidc.py needs pylidc, which is not installed: `pip install pylidc`, download the LIDC-IDRI DICOM "
    "files and annotations (TCIA), and give their folder in ~/.pylidcrc (see pylidc's documentation)."
)


class Outline(Protocol):
    """What the conversion uses of a pylidc ``Annotation``."""

    def bbox(self) -> tuple[slice, slice, slice]: ...

    def boolean_mask(self) -> np.ndarray: ...


#: the converted data set's index entries
DATASET = {"name": "LIDC-IDRI", "description": "LIDC-IDRI nodules, consensus masks", "modality": {"0": "CT"}}


def import_pylidc() -> Any:
    """The ``pylidc`` module, or an ImportError that says how to get it."""
    try:
        return importlib.import_module("pylidc")
    except ImportError as e:
        raise ImportError(MISSING_PYLIDC) from e


def consensus_mask(shape: Sequence[int], outlines: Sequence[Outline], agreement: float = 0.5) -> np.ndarray:
    """Voxels marked by at least ``agreement`` of the outlines of one nodule, in a volume of ``shape``."""
    if not outlines:
        return np.zeros(shape, bool)
    votes = np.zeros(shape, np.int16)
    for outline in outlines:
        box, mask = outline.bbox(), np.asarray(outline.boolean_mask(), bool)
        if mask.shape != votes[box].shape:
            raise ValueError(f"an outline's mask has shape {mask.shape} but its box {box} has {votes[box].shape}")
        votes[box] += mask
    return votes >= agreement * len(outlines) - 1e-9


def nodule_label(
    shape: Sequence[int], clusters: Sequence[Sequence[Outline]], agreement: float = 0.5, min_readers: int = 1
) -> np.ndarray:
    """uint8 label map (0 background, 1 nodule): the union of the consensus of every nodule outlined by at least
    ``min_readers`` readers."""
    label = np.zeros(shape, np.uint8)
    for outlines in clusters:
        if len(outlines) >= min_readers:
            label[consensus_mask(shape, outlines, agreement)] = 1
    return label


def dicom_affine(pixel_spacing: Sequence[float], slice_z: Sequence[float], position_xy: Sequence[float]) -> np.ndarray:
    """NIfTI (RAS+) affine of an axial series stored (column, row, slice): columns run to the patient's left and
    rows posterior from ``position_xy`` (DICOM LPS, mm), slices at the sorted ``slice_z`` (mm), which must be evenly
    spaced."""
    z = np.sort(np.asarray(slice_z, float))
    steps = np.diff(z)
    if len(z) > 1 and np.ptp(steps) > 0.01 * max(float(np.median(steps)), 1e-6) + 1e-3:
        raise ValueError(f"slices are not evenly spaced (steps {steps.min():g} to {steps.max():g} mm)")
    row_mm, column_mm = float(pixel_spacing[0]), float(pixel_spacing[1])
    dz = float(np.median(steps)) if len(z) > 1 else 1.0
    affine = np.diag([-column_mm, -row_mm, dz, 1.0])
    affine[:3, 3] = [-float(position_xy[0]), -float(position_xy[1]), z[0]]
    return affine


def write_scan(
    root: Path, name: str, volume: np.ndarray, affine: np.ndarray, clusters: Sequence[Sequence[Outline]], **kw: Any
) -> dict[str, Any]:
    """Write one scan's image (rows, columns, slices HU volume) and its consensus label; return its entry."""
    label = nodule_label(volume.shape, clusters, **kw)
    entry: dict[str, Any] = {"subject": name}
    for key, data in (("image", np.asarray(volume).astype(np.int16)), ("label", label)):
        path = root / f"{key}sTr" / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(1, 0, 2)), affine), tmp)
        tmp.replace(path)
        entry[key] = str(path.relative_to(root))
    entry["nodule_count"] = sum(len(c) >= kw.get("min_readers", 1) for c in clusters)
    return entry


def main(output_dir: str, max_scans: int | None = None, agreement: float = 0.5, min_readers: int = 1) -> str:
    """Convert the LIDC-IDRI scans that pylidc knows into ``output_dir``; return the path of ``dataset.json``."""
    pl = import_pylidc()
    root = Path(output_dir)
    entries = []
    for n, scan in enumerate(pl.query(pl.Scan).all()[:max_scans]):
        images = scan.load_all_dicom_images(verbose=False)
        volume = scan.to_volume(verbose=False)
        position = images[0].ImagePositionPatient
        affine = dicom_affine([scan.pixel_spacing] * 2, scan.slice_zvals, position[:2])
        entry = write_scan(root, f"lidc_{n:04d}", volume, affine, scan.cluster_annotations(), agreement=agreement,
                           min_readers=min_readers)  # fmt: skip
        entries.append({**entry, "patient_id": scan.patient_id})
    return write_prepared(root, {**DATASET, "labels": LABELS}, entries)


if __name__ == "__main__":
    try:
        fire.Fire(main)
    except ImportError as err:
        raise SystemExit(f"error: {err}") from None
