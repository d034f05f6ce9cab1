"""common.dicom: a CT volume written as a DICOM series reads back, through MONAI's ITKReader, as its NIfTI does."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

from common.dicom import ras_to_lps, write_dicom_series
from common.series import CheckDicomSeriesd, check_series

#: a non-square matrix (i, j, k) = (13, 9, 6), so that a transposed slice cannot pass
SHAPE = (13, 9, 6)


def _rotation_z(degrees: float) -> np.ndarray:
    """A rotation about the body axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _affine(axes: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """A 4x4 affine from its 3x3 voxel axes (columns) and origin (mm)."""
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = axes, origin
    return affine


#: RAS+ affines: 0.7 x 0.9 mm pixels, 2.5 mm slices, a non-trivial origin
AFFINES = {
    # voxel axes along +x, +y, +z (RAS-ordered grid)
    "ras": _affine(np.diag([0.7, 0.9, 2.5]), (-120.5, 35.25, -412.0)),
    # voxel axes along -x, -y, +z: the grid DICOM-to-NIfTI converters store (LPS-ordered)
    "lps": _affine(np.diag([-0.7, -0.9, 2.5]), (118.3, -20.7, 96.5)),
    # slices stored from head to feet (against the slice normal of the in-plane axes)
    "feet_first": _affine(np.diag([0.7, 0.9, -2.5]), (-80.0, 12.5, 300.0)),
    # an in-plane rotation of 25 degrees (oblique only about the body axis)
    "rotated": _affine(_rotation_z(25.0) @ np.diag([0.7, 0.9, 2.5]), (-60.0, 40.0, -150.0)),
}


def _volume(seed: int = 0) -> np.ndarray:
    """A random int16 HU volume covering air to dense bone, with a distinct value at voxel (0, 0, 0)."""
    volume = np.random.default_rng(seed).integers(-1024, 3000, SHAPE).astype(np.int16)
    volume[0, 0, 0] = 2999
    return volume


def _load_ras(path: Path, reader: str | None = None):
    """Load through MONAI as a bundle does: LoadImage, EnsureChannelFirst, Orientation RAS."""
    load = LoadImage(reader=reader, image_only=True) if reader else LoadImage(image_only=True)
    return Compose([load, EnsureChannelFirst(), Orientation(axcodes="RAS")])(str(path))


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_dicom_series_reads_back_like_the_nifti(tmp_path, kind):
    volume, affine = _volume(), AFFINES[kind]
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "ct.nii.gz")
    paths = write_dicom_series(volume, affine, tmp_path / "series", patient_id="P1", series_description=kind)
    assert [p.name for p in paths] == [f"slice_{k:04d}.dcm" for k in range(1, SHAPE[2] + 1)]
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == [p.name for p in paths]
    from_nifti = _load_ras(tmp_path / "ct.nii.gz")
    from_dicom = _load_ras(tmp_path / "series", reader="ITKReader")
    assert from_dicom.shape == from_nifti.shape == (1, *SHAPE)
    np.testing.assert_array_equal(np.asarray(from_dicom), np.asarray(from_nifti))
    np.testing.assert_allclose(np.asarray(from_dicom.affine), np.asarray(from_nifti.affine), atol=1e-4)
    # the voxel that was (0, 0, 0) in the NIfTI lies at the NIfTI's origin in the world, in both
    hit = np.argwhere(np.asarray(from_dicom)[0] == 2999)
    assert len(hit) >= 1
    world = [np.asarray(from_dicom.affine)[:3] @ np.append(h, 1.0) for h in hit]
    assert min(np.abs(w - affine[:3, 3]).max() for w in world) < 1e-3


@pytest.mark.parametrize("kind", ["ras", "lps"])
def test_every_file_reads_with_pydicom(tmp_path, kind):
    volume, affine = _volume(1), AFFINES[kind]
    paths = write_dicom_series(volume, affine, tmp_path / "series", patient_id="P7", series_description="abdomen")
    lps = ras_to_lps(affine)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(paths)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1 and len({ds.StudyInstanceUID for ds in datasets}) == 1
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "CT" and ds.PatientID == "P7" and ds.SeriesDescription == "abdomen"
        assert ds.InstanceNumber == k + 1
        assert (ds.Rows, ds.Columns) == (SHAPE[1], SHAPE[0])
        assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.9, 0.7])
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], lps[:3] @ [0, 0, k, 1], atol=1e-6)
        expected = np.sign(np.diag(lps)[:2])  # RAS grid: -x, -y in LPS; LPS grid: +x, +y
        np.testing.assert_allclose(
            [float(v) for v in ds.ImageOrientationPatient], [expected[0], 0, 0, 0, expected[1], 0]
        )
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert ds.pixel_array.shape == (SHAPE[1], SHAPE[0])
        np.testing.assert_array_equal(hu, volume[:, :, k].T)


def test_write_dicom_series_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="3D"):
        write_dicom_series(np.zeros((4, 4), np.int16), np.eye(4), tmp_path / "a")
    with pytest.raises(ValueError, match="4x4"):
        write_dicom_series(np.zeros((4, 4, 2), np.int16), np.eye(3), tmp_path / "a")
    sheared = np.eye(4)
    sheared[0, 2] = 0.5  # a gantry tilt
    with pytest.raises(ValueError, match="not orthogonal"):
        write_dicom_series(np.zeros((4, 4, 2), np.int16), sheared, tmp_path / "a")
    with pytest.raises(ValueError, match="do not fit int16"):
        write_dicom_series(np.full((4, 4, 2), 40000.0), np.eye(4), tmp_path / "a")
    assert not (tmp_path / "a").exists(), "nothing is written for a bad input"
    write_dicom_series(np.zeros((4, 4, 2), np.int16), np.eye(4), tmp_path / "b")
    with pytest.raises(FileExistsError, match="slice_0001.dcm"):
        write_dicom_series(np.zeros((4, 4, 2), np.int16), np.eye(4), tmp_path / "b")


def _series(folder: Path, slices: int = 8, **options) -> list[Path]:
    """A small CT series of ``slices`` 2.5 mm slices written into ``folder``."""
    volume = np.random.default_rng(0).integers(-1000, 400, (13, 9, slices)).astype(np.int16)
    return write_dicom_series(volume, AFFINES["lps"], folder, **options)


@pytest.mark.parametrize("orientation", ["ras", "feet_first", "rotated"])
def test_a_complete_series_passes_the_checks(tmp_path, orientation):
    volume = np.zeros((13, 9, 6), np.int16)
    write_dicom_series(volume, AFFINES[orientation], tmp_path)
    check_series(tmp_path)
    assert CheckDicomSeriesd("image")({"image": str(tmp_path)})["image"] == str(tmp_path)


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path):
    paths = _series(tmp_path)
    paths[4].unlink()
    with pytest.raises(ValueError) as err:
        check_series(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: 1 missing slice(s): 5.00 mm between")
    assert "slice_0004.dcm" in message and "slice_0006.dcm" in message and "steps 2.50 mm" in message


def test_a_truncated_slice_is_refused_naming_the_file(tmp_path):
    paths = _series(tmp_path)
    paths[2].write_bytes(paths[2].read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{paths[2]}: (truncated|not a readable DICOM file)"):
        check_series(tmp_path)


def test_two_series_in_one_folder_are_refused(tmp_path):
    _series(tmp_path / "one")
    second = _series(tmp_path / "two", slices=5, series_number=2)
    for path in second:
        path.rename(tmp_path / "one" / f"second_{path.name}")
    with pytest.raises(ValueError) as err:
        check_series(tmp_path / "one")
    message = str(err.value)
    assert f"{tmp_path / 'one'}: holds 2 DICOM series" in message and "put each series in a folder" in message
    assert "number 1 'synthetic CT': 8 files" in message and "number 2 'synthetic CT': 5 files" in message
