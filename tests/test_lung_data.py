"""The lung nodule bundle's data scripts: synthetic chest CT phantoms and the LIDC-IDRI conversion."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from common.data import load_datalist
from conftest import ROOT, assert_same_through_monai, dataset_entries, load_module, synthetic_fixture, world
from synthetic import lung as synthetic

SCRIPTS = ROOT / "bundles" / "lung_nodule_fcn3d" / "scripts"
prepare_lidc = load_module(SCRIPTS / "prepare_lidc.py", "lung_prepare_lidc")

SIZE, NUM_TRAIN, NUM_TEST, SEED = 96, 3, 1, 1


synthetic_dir = synthetic_fixture("lung", num_train=NUM_TRAIN, num_test=NUM_TEST, seed=SEED, size=SIZE)


def test_synthetic_dataset_layout_and_geometry(synthetic_dir):
    index = json.loads((synthetic_dir / "dataset.json").read_text())
    assert index["name"] == "SyntheticLungNoduleCT" and index["tensorImageSize"] == "3D"
    assert index["modality"] == {"0": "CT"} and index["labels"] == {"0": "background", "1": "nodule"}
    assert (index["numTraining"], index["numTest"]) == (NUM_TRAIN, NUM_TEST)
    assert [e["image"] for e in index["training"]] == [f"imagesTr/lung_{i:03d}.nii.gz" for i in range(3)]
    assert index["test"][0]["label"] == "labelsTs/lung_003.nii.gz"
    assert [e["orientation"] for e in dataset_entries(synthetic_dir)] == ["RAS", "LPS", "RAS", "LPS"]
    for entry in dataset_entries(synthetic_dir):
        assert set(entry) == {"image", "label", "subject", "orientation", "nodule_count", "nodules"}
        image, label = nib.load(synthetic_dir / entry["image"]), nib.load(synthetic_dir / entry["label"])
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape and image.shape[:2] == (SIZE, SIZE)
        np.testing.assert_array_equal(image.affine, label.affine)
        assert "".join(nib.aff2axcodes(image.affine)) == entry["orientation"]
        spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
        assert 300 / SIZE - 1e-3 <= spacing[0] <= 360 / SIZE + 1e-3 and 1.25 - 1e-3 <= spacing[2] <= 2.5 + 1e-3
        assert 145 <= spacing[2] * image.shape[2] <= 155, "150 mm of chest"


def test_synthetic_known_truth_equals_the_labels(synthetic_dir):
    for entry in dataset_entries(synthetic_dir):
        label_image = nib.load(synthetic_dir / entry["label"])
        labels, affine = np.asarray(label_image.dataobj), label_image.affine
        voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
        assert set(np.unique(labels)) <= {0, 1}
        regions = sorted(regionprops(connected_components(labels == 1, connectivity=3)), key=lambda r: -r.area)
        assert entry["nodule_count"] == len(regions) == len(entry["nodules"]) and 1 <= len(regions) <= 4
        for truth, region in zip(entry["nodules"], regions):
            assert truth["volume_mm3"] == pytest.approx(region.area * voxel_mm3, abs=0.01)
            np.testing.assert_allclose(truth["centre_mm"], world(affine, np.array(region.centroid)), atol=0.01)
            assert truth["diameter_mm"] == pytest.approx((6 * truth["volume_mm3"] / np.pi) ** (1 / 3), abs=0.01)


@pytest.mark.parametrize("seed", [0, 4, 9])
def test_nodules_lie_in_the_lungs_apart_some_against_the_pleura(seed):
    phantom = synthetic.build_phantom(seed, size=128)
    nodules = phantom.label == 1
    assert (nodules <= phantom.lung).all(), "nodule voxels are lung voxels"
    measured = synthetic.measure(phantom.label, phantom.affine)
    assert measured["nodule_count"] == len(phantom.nodules), "every placed nodule is one component"
    for placed in phantom.nodules:
        assert 3.0 * 0.85 - 1e-6 <= 2 * max(placed["semi_axes_mm"]) <= 30.0 * 1.15 + 1e-6
        centre = np.linalg.solve(phantom.affine, np.append(placed["centre_mm"], 1.0))[:3]
        assert phantom.label[tuple(np.rint(centre).astype(int))] == 1, "the centre voxel is nodule"
    pleural = [n for seed in range(12) for n in synthetic.build_phantom(seed, size=64).nodules if n["pleural"]]
    assert pleural, "some nodules touch the pleura"


def test_a_pleural_nodule_touches_the_chest_wall():
    for seed in range(20):
        phantom = synthetic.build_phantom(seed, size=96, orientation="RAS")
        for placed in phantom.nodules:
            if not placed["pleural"]:
                continue
            centre = tuple(np.rint(np.linalg.solve(phantom.affine, [*placed["centre_mm"], 1.0])[:3]).astype(int))
            components, _ = ndimage.label(phantom.label == 1, np.ones((3, 3, 3), bool))
            nodule = components == components[centre]
            around = ndimage.binary_dilation(nodule, np.ones((3, 3, 3), bool)) & ~nodule
            assert (~phantom.lung[around]).any(), "a juxtapleural nodule borders tissue outside the lung"
            return
    pytest.fail("no pleural nodule in 20 seeds")


def test_tissue_hounsfield_units():
    phantom = synthetic.build_phantom(2, size=128)
    image = phantom.image.astype(float)
    assert phantom.image.dtype == np.int16 and image.min() >= -1024 and image.max() <= 3071
    lung_core = ndimage.binary_erosion(phantom.lung & (phantom.label == 0), iterations=2) & (image < -500)
    assert -880 <= image[lung_core].mean() <= -820, "lung fields near -850 HU"
    assert (image > 400).sum() > 100, "ribs and spine in bone HU"
    air = ~ndimage.binary_dilation(image > -900, iterations=3)
    assert abs(image[air].mean() + 1000) < 5
    for placed in phantom.nodules:
        centre = tuple(np.rint(np.linalg.solve(phantom.affine, np.append(placed["centre_mm"], 1.0))[:3]).astype(int))
        assert image[centre] > -400, "solid nodules stand out of the lung"
    vessels = phantom.lung & (phantom.label == 0) & (image > -300)
    assert vessels.sum() > 50, "the lungs hold vessels"


def test_ras_and_lps_grids_hold_the_same_anatomy(tmp_path):
    ras = synthetic.build_phantom(5, size=48, orientation="RAS")
    lps = synthetic.build_phantom(5, size=48, orientation="LPS")
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S") and nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(lps.image, ras.image[::-1, ::-1])
    np.testing.assert_array_equal(lps.label, ras.label[::-1, ::-1])
    assert ras.nodules == lps.nodules
    assert_same_through_monai(tmp_path, ras, lps)


def test_synthetic_is_deterministic_per_seed_and_checks_arguments():
    a, b, c = (synthetic.generate_case(s, size=40) for s in (4, 4, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    image, _, affine = synthetic.generate_case(0, size=32, num_slices=10, spacing=(9.0, 9.0, 12.0))
    assert image.shape == (32, 32, 10) and np.allclose(np.abs(np.diag(affine)[:3]), [9, 9, 12])
    with pytest.raises(ValueError, match="spacing"):
        synthetic.generate_case(0, size=32, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="orientation"):
        synthetic.generate_case(0, size=32, orientation="LAS")


def test_synthetic_output_reads_with_load_datalist(synthetic_dir):
    training = load_datalist(str(synthetic_dir), "training", val_fraction=0.34, seed=0)
    assert len(training) == 2 and all(Path(e["label"]).is_file() for e in training)


# --- LIDC-IDRI conversion, on fake pylidc annotations ---


class FakeOutline:
    """A reader's outline as pylidc's Annotation gives it: a box into the volume and a mask in that box."""

    def __init__(self, shape: tuple[int, ...], voxels: list[tuple[int, int, int]]) -> None:
        full = np.zeros(shape, bool)
        for v in voxels:
            full[v] = True
        index = np.argwhere(full)
        self.box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(index.min(0), index.max(0)))
        self.mask = full[self.box]

    def bbox(self) -> tuple[slice, slice, slice]:
        return self.box

    def boolean_mask(self) -> np.ndarray:
        return self.mask


def test_consensus_keeps_voxels_half_the_readers_mark():
    shape = (6, 6, 4)
    a = FakeOutline(shape, [(1, 1, 1), (1, 2, 1), (2, 2, 1)])
    b = FakeOutline(shape, [(1, 2, 1), (2, 2, 1), (3, 3, 2)])
    c = FakeOutline(shape, [(2, 2, 1), (4, 4, 3)])
    d = FakeOutline(shape, [(2, 2, 1), (1, 2, 1)])
    # four readers: 50 % is 2 outlines; (1,2,1) has 3, (2,2,1) 4, the others 1
    mask = prepare_lidc.consensus_mask(shape, [a, b, c, d])
    assert set(map(tuple, np.argwhere(mask))) == {(1, 2, 1), (2, 2, 1)}
    # three readers: 50 % means 2 of 3 (1.5 rounded up)
    assert set(map(tuple, np.argwhere(prepare_lidc.consensus_mask(shape, [a, b, c])))) == {(1, 2, 1), (2, 2, 1)}
    # one reader: its own outline; a stricter agreement keeps only what all mark
    np.testing.assert_array_equal(prepare_lidc.consensus_mask(shape, [a]), _full(shape, a))
    assert set(map(tuple, np.argwhere(prepare_lidc.consensus_mask(shape, [a, b, c, d], 1.0)))) == {(2, 2, 1)}
    assert not prepare_lidc.consensus_mask(shape, []).any()


def _full(shape, outline) -> np.ndarray:
    """An outline's mask in the whole volume."""
    full = np.zeros(shape, bool)
    full[outline.bbox()] = outline.boolean_mask()
    return full


def test_nodule_label_unions_the_nodules_and_honours_min_readers():
    shape = (8, 8, 5)
    first = [FakeOutline(shape, [(1, 1, 1), (1, 1, 2)]), FakeOutline(shape, [(1, 1, 1)])]
    second = [FakeOutline(shape, [(6, 6, 3)])]
    label = prepare_lidc.nodule_label(shape, [first, second])
    assert label.dtype == np.uint8 and set(map(tuple, np.argwhere(label))) == {(1, 1, 1), (1, 1, 2), (6, 6, 3)}
    label = prepare_lidc.nodule_label(shape, [first, second], min_readers=2)
    assert set(map(tuple, np.argwhere(label))) == {(1, 1, 1), (1, 1, 2)}


def test_dicom_affine_and_written_scan_are_lps_ordered(tmp_path):
    affine = prepare_lidc.dicom_affine([0.7, 0.6], [-100.0, -97.5, -102.5], [-180.0, -150.0])
    np.testing.assert_allclose(affine, [[-0.6, 0, 0, 180.0], [0, -0.7, 0, 150.0], [0, 0, 2.5, -102.5], [0, 0, 0, 1]])
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    with pytest.raises(ValueError, match="evenly"):
        prepare_lidc.dicom_affine([1, 1], [0.0, 1.0, 3.0], [0, 0])
    volume = np.full((10, 12, 4), -1000, np.int16)  # rows, columns, slices, as pylidc's to_volume gives them
    volume[2, 7, 1] = 50
    entry = prepare_lidc.write_scan(tmp_path, "lidc_0000", volume, affine, [[FakeOutline(volume.shape, [(2, 7, 1)])]])
    assert entry == {"subject": "lidc_0000", "image": "imagesTr/lidc_0000.nii.gz", "label": "labelsTr/lidc_0000.nii.gz",
                     "nodule_count": 1}  # fmt: skip
    image, label = nib.load(tmp_path / entry["image"]), nib.load(tmp_path / entry["label"])
    assert image.shape == label.shape == (12, 10, 4) and label.get_data_dtype() == np.uint8
    assert np.asarray(image.dataobj)[7, 2, 1] == 50 and np.asarray(label.dataobj)[7, 2, 1] == 1
    # column 7 lies 7 * 0.6 mm to the patient's left of the first column: RAS x = 180 - 4.2
    np.testing.assert_allclose(world(image.affine, np.array([[7, 2, 1]]))[0], [175.8, 148.6, -100.0])
    assert not list(tmp_path.rglob(".*")), "temporary files left behind"


@pytest.mark.skipif(importlib.util.find_spec("pylidc") is not None, reason="pylidc is installed here")
def test_prepare_lidc_without_pylidc_says_how_to_get_it(tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "prepare_lidc.py"), "--output_dir", str(tmp_path / "lidc")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "needs pylidc" in result.stderr and "pip install pylidc" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ImportError, match="needs pylidc"):
        prepare_lidc.import_pylidc()
