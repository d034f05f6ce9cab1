"""Write a CT volume as a DICOM series (one file per slice), for tests of the CT bundles' DICOM input.

The volume comes as the NIfTI convention has it: an array indexed (i, j, k) and a 4x4 affine mapping voxel indices
to RAS+ world coordinates in mm (x to the patient's right, y anterior, z superior). DICOM's patient coordinates are
LPS (x to the patient's left, y posterior, z superior), so the affine is first turned into ``diag(-1, -1, 1) @ A``.
Each slice k becomes one CT Image Storage file: column index = i, row index = j, so the stored pixel array is the
slice transposed (``Rows`` = the j extent, ``Columns`` = the i extent); ``ImageOrientationPatient`` holds the unit
LPS directions of increasing column index (the affine's first column) then of increasing row index (its second
column); ``PixelSpacing`` is (row spacing, column spacing) = (|second column|, |first column|);
``ImagePositionPatient`` is the LPS position of voxel (0, 0, k); ``SliceThickness`` and ``SpacingBetweenSlices``
are |third column|. Readers (ITK/GDCM, and through them MONAI's ``ITKReader``) sort the files by their position
along the slice normal, so a slice axis running against the normal is fine; the three axes must be orthogonal
(no gantry tilt), any rotation is allowed.

Pixels are stored as signed 16-bit integers with ``RescaleSlope`` 1 and ``RescaleIntercept`` (default -1024, as
most scanners write it): stored value = round(HU) - intercept. Every file gets its own SOPInstanceUID; the series,
study and frame of reference share theirs (fresh random UIDs unless given).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

__all__ = ["ras_to_lps", "write_dicom_series"]

#: RAS+ <-> LPS: both negate x and y
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """The LPS (DICOM) version of a RAS+ (NIfTI) voxel-to-world affine, and vice versa."""
    return _FLIP @ np.asarray(affine, dtype=float)


def _ds(values: Sequence[float]) -> list[DSfloat]:
    """Decimal strings for DICOM (at most 16 characters each)."""
    return [DSfloat(float(v), auto_format=True) for v in values]


def write_dicom_series(
    volume_hu: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike,
    patient_id: str = "SYNTHETIC",
    series_description: str = "synthetic CT",
    rescale_intercept: float = -1024.0,
    study_uid: str | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write a 3D HU volume (i, j, k) with its RAS+ affine as a CT DICOM series, one file per slice k.

    Files are ``folder/slice_0001.dcm`` ... in slice order; returns their paths. Raises ValueError for a volume that
    is not 3D or does not fit int16 after the intercept, an affine that is not 4x4 or has non-orthogonal axes, and
    FileExistsError when one of the files already exists.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"write_dicom_series: expected a 3D volume, got shape {volume.shape}.")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"write_dicom_series: expected a finite 4x4 affine, got shape {affine.shape}.")
    lps = ras_to_lps(affine)
    axes = lps[:3, :3]
    spacing = voxel_sizes(lps)
    if (spacing <= 0).any():
        raise ValueError(f"write_dicom_series: the affine has a zero-length axis: {affine.tolist()}.")
    directions = axes / spacing
    cosines = np.abs(directions.T @ directions - np.eye(3)).max()
    if cosines > 1e-4:
        raise ValueError(
            "write_dicom_series: the affine's voxel axes are not orthogonal (sheared, e.g. a gantry tilt), which "
            f"a DICOM series cannot hold: {affine.tolist()}."
        )
    stored = np.rint(volume.astype(np.float64)) - rescale_intercept
    if not np.isfinite(stored).all() or stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(
            f"write_dicom_series: HU values {volume.min()}..{volume.max()} do not fit int16 with intercept "
            f"{rescale_intercept}."
        )
    stored = stored.astype(np.int16)
    folder = Path(folder)
    paths = [folder / f"slice_{k + 1:04d}.dcm" for k in range(volume.shape[2])]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"write_dicom_series: {existing[0]} already exists; write each series to a new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    normal = np.cross(directions[:, 0], directions[:, 1])
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for k, path in enumerate(paths):
        position = lps[:3] @ np.array([0.0, 0.0, k, 1.0])
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "synthetic"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds(np.concatenate([directions[:, 0], directions[:, 1]]))
        ds.SliceLocation = _ds([position @ normal])[0]
        ds.SliceThickness = _ds([spacing[2]])[0]
        ds.SpacingBetweenSlices = _ds([spacing[2]])[0]
        ds.PixelSpacing = _ds([spacing[1], spacing[0]])  # (between rows, between columns)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1  # signed
        ds.RescaleIntercept = _ds([rescale_intercept])[0]
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()  # rows run along j
        try:
            ds.save_as(path, enforce_file_format=True)
        except TypeError:  # pragma: no cover - pydicom 2
            ds.save_as(path, write_like_original=False)
    return paths
