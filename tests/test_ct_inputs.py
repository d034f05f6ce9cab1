"""CT bundles (metadata modality CT) read what scanners and converters write: NIfTI in RAS or LPS voxel order, a
DICOM series folder and NRRD, and write each segmentation back in its input's grid; an image that is not CT in
Hounsfield units is refused naming the file. Checked on each CT bundle's quick demo run."""

from __future__ import annotations

import json
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest

from common.dicom import write_dicom_series
from common.profile import describe
from conftest import BUNDLE_NAMES, QuickRun, training_preprocessing

CT_BUNDLES = [name for name in BUNDLE_NAMES if describe(name).modality == "CT"]


@pytest.fixture(params=CT_BUNDLES)
def run(request, quick_run) -> QuickRun:
    """A CT bundle's quick demo run."""
    return quick_run(request.param)


def test_nifti_of_both_orientations_dicom_and_nrrd_keep_their_grids(run, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    entries = run.index["training"] + run.index["test"]
    ras = next(e for e in entries if e["orientation"] == "RAS")
    lps = next(e for e in entries if e["orientation"] == "LPS")
    for entry in (ras, lps):
        (inputs / Path(entry["image"]).name).write_bytes((run.data / entry["image"]).read_bytes())
    # the LPS case again as a DICOM series folder, and the RAS case as NRRD (ITK writes it in LPS space)
    lps_nifti = nib.load(run.data / lps["image"])
    write_dicom_series(np.asarray(lps_nifti.dataobj), lps_nifti.affine, inputs / "series_lps")
    itk.imwrite(itk.imread(str(run.data / ras["image"])), str(inputs / "ras_copy.nrrd"))
    # an MR-like intensity range: not CT in HU
    mr = np.random.default_rng(0).uniform(0, 900, (40, 40, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(mr, np.eye(4)), inputs / "mr.nii.gz")
    out = run.segment(inputs, outputs, failures=1)
    ras_name, lps_name = (Path(e["image"]).name[: -len(".nii.gz")] for e in (ras, lps))
    written = sorted(p.name for p in outputs.glob("*_seg.nii.gz"))
    assert written == sorted(f"{n}_seg.nii.gz" for n in (ras_name, lps_name, "ras_copy", "series_lps"))
    classes = set(run.profile.classes)
    for name, source in ((ras_name, ras), (lps_name, lps)):
        image, seg = nib.load(run.data / source["image"]), nib.load(outputs / f"{name}_seg.nii.gz")
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= classes
    # the DICOM series is the LPS volume: in world (RAS) orientation, the two segmentations agree
    from_nifti = np.asarray(nib.as_closest_canonical(nib.load(outputs / f"{lps_name}_seg.nii.gz")).dataobj)
    dicom_seg = nib.as_closest_canonical(nib.load(outputs / "series_lps_seg.nii.gz"))
    np.testing.assert_allclose(dicom_seg.affine, nib.as_closest_canonical(lps_nifti).affine, atol=1e-3)
    assert (np.asarray(dicom_seg.dataobj) == from_nifti).mean() > 0.999
    # the NRRD copy of the RAS case: the same grid in world space, the same segmentation
    from_nrrd = nib.load(outputs / "ras_copy_seg.nii.gz")
    np.testing.assert_allclose(from_nrrd.affine, nib.load(run.data / ras["image"]).affine, atol=1e-3)
    ras_seg = np.asarray(nib.load(outputs / f"{ras_name}_seg.nii.gz").dataobj)
    assert (np.asarray(from_nrrd.dataobj) == ras_seg).mean() > 0.999
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {"mr.nii.gz"}
    assert "not CT in Hounsfield units" in failures["mr.nii.gz"] and "mr.nii.gz" in failures["mr.nii.gz"]
    assert "skipped" in out


def test_training_image_not_in_hounsfield_units_is_refused(run, tmp_path):
    case = run.index["training"][0]
    image = nib.load(run.data / case["image"])
    scaled = (np.asarray(image.dataobj).astype(np.float32) + 1024) / 4096  # already scaled to 0..1
    nib.save(nib.Nifti1Image(scaled, image.affine), tmp_path / "img.nii.gz")
    with pytest.raises(Exception) as err:
        training_preprocessing(run.profile)(
            {"image": str(tmp_path / "img.nii.gz"), "label": str(run.data / case["label"])}
        )
    text = str(err.value.__cause__ or err.value)
    assert "img.nii.gz" in text and "not CT in Hounsfield units" in text, text
