"""The liver bundle's data scripts: synthetic abdominal CT phantoms and the LiTS conversion."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import voxel_sizes
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from common.data import load_datalist
from conftest import (
    ROOT,
    assert_same_through_monai,
    dataset_entries,
    load_module,
    run_prepare,
    synthetic_fixture,
    world,
)
from synthetic import liver as synthetic

SCRIPTS = ROOT / "bundles" / "liver_ct_unet3d" / "scripts"
prepare_lits = load_module(SCRIPTS / "prepare_lits.py", "liver_prepare_lits")

LABELS = {"0": "background", "1": "liver", "2": "tumour"}
#: the fixture data set: 3 training and 1 test case, 96 x 96 pixels
SIZE, NUM_TRAIN, NUM_TEST, SEED = 96, 3, 1, 1


# --- synthetic phantoms ---


synthetic_dir = synthetic_fixture("liver", num_train=NUM_TRAIN, num_test=NUM_TEST, seed=SEED, size=SIZE)


def test_synthetic_dataset_layout_and_geometry(synthetic_dir):
    index = json.loads((synthetic_dir / "dataset.json").read_text())
    assert index["name"] == "SyntheticLiverCT" and index["tensorImageSize"] == "3D"
    assert index["modality"] == {"0": "CT"} and index["labels"] == LABELS
    assert (index["numTraining"], index["numTest"]) == (NUM_TRAIN, NUM_TEST)
    names = [f"liver_{i:03d}" for i in range(NUM_TRAIN + NUM_TEST)]
    assert [e["image"] for e in index["training"]] == [f"imagesTr/{n}.nii.gz" for n in names[:NUM_TRAIN]]
    assert [e["label"] for e in index["training"]] == [f"labelsTr/{n}.nii.gz" for n in names[:NUM_TRAIN]]
    assert index["test"][0]["image"] == "imagesTs/liver_003.nii.gz"
    assert index["test"][0]["label"] == "labelsTs/liver_003.nii.gz"
    assert [e["orientation"] for e in dataset_entries(synthetic_dir)] == ["RAS", "LPS", "RAS", "LPS"]
    assert sorted(p.name for p in (synthetic_dir / "imagesTr").iterdir()) == [f"{n}.nii.gz" for n in names[:3]]
    for entry in dataset_entries(synthetic_dir):
        assert set(entry) == {
            "image",
            "label",
            "subject",
            "orientation",
            "liver_ml",
            "tumour_ml",
            "tumour_count",
            "tumours",
        }
        image, label = nib.load(synthetic_dir / entry["image"]), nib.load(synthetic_dir / entry["label"])
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape and image.shape[:2] == (SIZE, SIZE) and 40 <= image.shape[2] <= 80
        np.testing.assert_array_equal(image.affine, label.affine)
        assert "".join(nib.aff2axcodes(image.affine)) == entry["orientation"]
        assert image.header.get_xyzt_units() == ("mm", "sec")
        spacing = voxel_sizes(image.affine)
        assert 300 / SIZE - 1e-3 <= spacing[0] <= 380 / SIZE + 1e-3 and spacing[1] == pytest.approx(spacing[0])
        assert 2.5 - 1e-3 <= spacing[2] <= 5.0 + 1e-3
        assert np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine)[:3])), "axial, not oblique"


def test_synthetic_known_truth_equals_the_labels(synthetic_dir):
    tumours_seen = 0
    for entry in dataset_entries(synthetic_dir):
        label_image = nib.load(synthetic_dir / entry["label"])
        labels, affine = np.asarray(label_image.dataobj), label_image.affine
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
        assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any()
        assert entry["liver_ml"] == pytest.approx((labels == 1).sum() * voxel_ml, abs=1e-3)
        assert entry["tumour_ml"] == pytest.approx((labels == 2).sum() * voxel_ml, abs=1e-4)
        assert 700 < entry["liver_ml"] + entry["tumour_ml"] < 2600, "an adult liver, 0.7-2.6 L"
        components = connected_components(labels == 2, connectivity=3)
        regions = sorted(regionprops(components), key=lambda r: -r.area)
        assert entry["tumour_count"] == len(regions) == len(entry["tumours"]) <= 4
        for truth, region in zip(entry["tumours"], regions):
            volume_mm3 = region.area * voxel_ml * 1000
            assert truth["volume_ml"] == pytest.approx(volume_mm3 / 1000, abs=1e-4)
            np.testing.assert_allclose(truth["centre_mm"], world(affine, np.array(region.centroid)), atol=0.01)
            assert truth["diameter_mm"] == pytest.approx((6 * volume_mm3 / np.pi) ** (1 / 3), abs=0.01)
            assert 2.0 < truth["diameter_mm"] < 40.0
        tumours_seen += len(regions)
    assert tumours_seen >= 2, "the fixture data set holds tumours"


def test_synthetic_output_reads_with_load_datalist(synthetic_dir):
    training = load_datalist(str(synthetic_dir), "training", val_fraction=0.34, seed=0)
    validation = load_datalist(str(synthetic_dir), "validation", val_fraction=0.34, seed=0)
    assert len(training) == 2 and len(validation) == 1
    for entry in training + validation:
        assert Path(entry["image"]).is_absolute() and Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
    assert [Path(e["image"]).name for e in load_datalist(str(synthetic_dir), "test")] == ["liver_003.nii.gz"]


@pytest.mark.parametrize("seed", [3, 11, 12, 21])
def test_tumours_lie_inside_the_liver(seed):
    phantom = synthetic.build_phantom(seed, size=128)
    labels = phantom.label
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    tumour = labels == 2
    assert len(phantom.tumours) == synthetic.measure(labels, phantom.affine)["tumour_count"]
    if tumour.any():
        around = ndimage.binary_dilation(tumour, np.ones((3, 3, 3), bool)) & ~tumour
        assert (labels[around] == 1).all(), "every tumour is surrounded by liver"
    for placed in phantom.tumours:
        assert 5.0 <= 2 * max(placed["semi_axes_mm"]) <= 40.0
        assert 30.0 <= placed["contrast_hu"] <= 70.0
        centre = np.linalg.solve(phantom.affine, np.append(placed["centre_mm"], 1.0))[:3]
        assert labels[tuple(np.rint(centre).astype(int))] == 2, "the tumour's centre voxel is tumour"
    # the liver and its tissue codes agree: parenchyma and vessels are liver, tumours tumour, nothing else
    codes = {name: i for i, name in enumerate(synthetic.TISSUES)}
    liver_codes = np.isin(phantom.tissue, [codes["liver"], codes["hepatic_vessel"]])
    np.testing.assert_array_equal(labels == 1, liver_codes)
    np.testing.assert_array_equal(labels == 2, phantom.tissue == codes["tumour"])


def _centroid_x(mask: np.ndarray, affine: np.ndarray) -> float:
    """World x (mm) of the centroid of a mask."""
    return float(world(affine, np.argwhere(mask).mean(axis=0, keepdims=True))[0, 0])


def test_liver_is_on_the_patients_right_in_world_coordinates(synthetic_dir):
    """RAS+: x grows to the patient's right, so the liver's centroid has a larger x than the body's centre."""
    for entry in dataset_entries(synthetic_dir):
        image = nib.load(synthetic_dir / entry["image"])
        labels = np.asarray(nib.load(synthetic_dir / entry["label"]).dataobj)
        body = np.asarray(image.dataobj) > -500
        liver_x, body_x = _centroid_x(labels > 0, image.affine), _centroid_x(body, image.affine)
        assert liver_x > body_x + 30, f"{entry['image']} ({entry['orientation']}): liver not on the patient's right"
    for seed in (0, 1):  # the spleen, on the other side
        phantom = synthetic.build_phantom(seed, size=64)
        spleen = phantom.tissue == synthetic.TISSUES.index("spleen")
        assert _centroid_x(spleen, phantom.affine) < _centroid_x(phantom.image > -500, phantom.affine) - 30


def test_ras_and_lps_grids_hold_the_same_anatomy(tmp_path):
    ras = synthetic.build_phantom(5, size=64, orientation="RAS")
    lps = synthetic.build_phantom(5, size=64, orientation="LPS")
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S") and nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    assert ras.orientation == "RAS" and lps.orientation == "LPS"
    assert not np.array_equal(ras.image, lps.image), "the arrays differ on disk"
    np.testing.assert_array_equal(lps.image, ras.image[::-1, ::-1])
    np.testing.assert_array_equal(lps.label, ras.label[::-1, ::-1])
    # voxel (i, j, k) of the RAS grid and (X-1-i, Y-1-j, k) of the LPS grid are the same point in the world
    corner = np.array([[0, 0, 0], [5, 7, 3], [63, 63, ras.image.shape[2] - 1]], float)
    flipped = corner * [-1, -1, 1] + [63, 63, 0]
    np.testing.assert_allclose(world(ras.affine, corner), world(lps.affine, flipped), atol=1e-6)
    assert ras.tumours == lps.tumours
    # through MONAI, as the bundle loads them, the two files become the same array on the same grid
    assert_same_through_monai(tmp_path, ras, lps)
    # orientation=None draws it from the seed, with the same anatomy
    drawn = synthetic.build_phantom(5, size=64)
    np.testing.assert_array_equal(drawn.image, ras.image if drawn.orientation == "RAS" else lps.image)


def test_tissue_hounsfield_units():
    phantom = synthetic.build_phantom(2, size=160)
    image, labels, tissue, hu = phantom.image.astype(float), phantom.label, phantom.tissue, phantom.hu
    assert phantom.image.dtype == np.int16 and image.min() >= -1024 and image.max() <= 3071
    for name, (low, high) in synthetic.HU_RANGES.items():
        assert low <= hu[name] <= high, name
    assert 30 <= hu["hepatic_vessel"] - hu["liver"] <= 60
    expected = {
        "fat": (-120, -80),
        "muscle": (30, 70),
        "liver": (85, 135),
        "spleen": (95, 125),
        "aorta": (145, 255),
        "kidney": (145, 205),
        "lung": (-900, -800),
    }
    structure = np.ones((3, 3, 1), bool)  # in-plane erosion: slices may be thick
    for name, (low, high) in expected.items():
        core = ndimage.binary_erosion(tissue == synthetic.TISSUES.index(name), structure, iterations=2)
        assert core.sum() > 50, name
        mean = image[core].mean()
        assert low <= mean <= high, f"{name}: mean {mean:.1f} HU"
        assert abs(mean - hu[name]) < 8, f"{name}: mean {mean:.1f} HU, drawn {hu[name]:.1f}"
    vertebra = tissue == synthetic.TISSUES.index("cortical_bone")
    assert image[vertebra].max() > 400, "bone reaches 400+ HU"
    air = ~ndimage.binary_dilation(image > -900, iterations=3)
    assert abs(image[air].mean() + 1000) < 5, "air outside the body"
    noise = image[air & (image > -1024)].std()
    assert 0.5 * phantom.noise_hu < noise < 1.2 * phantom.noise_hu and 10 <= phantom.noise_hu <= 20
    liver_mean = image[ndimage.binary_erosion(labels == 1, structure, iterations=2)].mean()
    for placed in phantom.tumours:
        centre = np.rint(np.linalg.solve(phantom.affine, np.append(placed["centre_mm"], 1.0))[:3]).astype(int)
        component = connected_components(labels == 2, connectivity=3)
        tumour = component == component[tuple(centre)]
        assert image[tumour].mean() < liver_mean - 15, "tumours are hypodense"
    assert len(phantom.tumours) >= 1


def test_synthetic_is_deterministic_per_seed():
    a = synthetic.generate_case(4, size=48)
    b = synthetic.generate_case(4, size=48)
    c = synthetic.generate_case(6, size=48)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_default_case_geometry():
    image, labels, affine = synthetic.generate_case(7)
    assert image.shape[:2] == (160, 160) and 40 <= image.shape[2] <= 80
    spacing = voxel_sizes(affine)
    assert 300 / 160 - 1e-3 <= spacing[0] <= 380 / 160 + 1e-3 and 2.5 - 1e-3 <= spacing[2] <= 5 + 1e-3
    liver_slices = np.flatnonzero((labels > 0).any(axis=(0, 1)))
    assert liver_slices[0] > 0 and liver_slices[-1] < image.shape[2] - 1, "the liver is covered, with margins"
    # the body fits the field of view: air all around the border
    border = np.concatenate([image[0].ravel(), image[-1].ravel(), image[:, 0].ravel(), image[:, -1].ravel()])
    assert (border < -900).all()


def test_large_realistic_grid():
    """The generator for the inference memory test: 512 x 512 pixels of 0.75 mm (fewer slices here, for speed)."""
    image, labels, affine = synthetic.generate_case(0, size=512, num_slices=24, spacing=(0.75, 0.75, 1.0))
    assert image.shape == labels.shape == (512, 512, 24) and image.dtype == np.int16 and labels.dtype == np.uint8
    np.testing.assert_allclose(voxel_sizes(affine), [0.75, 0.75, 1.0])
    assert (labels == 1).any() and (image > 400).any() and (image < -900).any()
    # num_slices alone: the slices stretch to cover the liver with margins
    image, labels, affine = synthetic.generate_case(0, size=48, num_slices=20)
    assert image.shape == (48, 48, 20) and (labels == 1).any() and not (labels[..., [0, -1]] > 0).any()
    with pytest.raises(ValueError, match="spacing"):
        synthetic.generate_case(0, size=32, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="orientation"):
        synthetic.generate_case(0, size=32, orientation="LAS")


# --- LiTS conversion ---

#: the tiny LiTS tree: case number -> (folder, extension, shape)
LITS_CASES = {
    0: ("Training Batch 1", ".nii", (10, 8, 5)),
    1: ("Training Batch 1", ".nii", (10, 8, 6)),
    28: ("Training Batch 2", ".nii.gz", (12, 8, 4)),
}
LITS_TESTS = {0: (10, 8, 3), 7: (9, 8, 4)}
#: an LPS-ordered grid with 0.8 mm pixels and 2 mm slices, as many LiTS volumes have
LITS_AFFINE = np.array([[-0.8, 0, 0, 200.0], [0, -0.8, 0, 180.0], [0, 0, 2.0, -400.0], [0, 0, 0, 1]], float)


def lits_case(number: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Volume (int16 HU) and segmentation (0..2, stored as float like some LiTS files) of one case."""
    rng = np.random.default_rng(number)
    volume = rng.integers(-1024, 1500, shape).astype(np.int16)
    segmentation = rng.integers(0, 3, shape).astype(np.float32)
    segmentation.flat[:3] = [0, 1, 2]
    return volume, segmentation


def write_lits_tree(root: Path) -> None:
    """A tiny tree in LiTS's layout: volume-N / segmentation-N in two batches, test volumes, a macOS fork file."""
    for number, (folder, extension, shape) in LITS_CASES.items():
        volume, segmentation = lits_case(number, shape)
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, LITS_AFFINE), root / folder / f"volume-{number}{extension}")
        nib.save(nib.Nifti1Image(segmentation, LITS_AFFINE), root / folder / f"segmentation-{number}{extension}")
    (root / "Test-Data").mkdir()
    for number, shape in LITS_TESTS.items():
        volume = lits_case(100 + number, shape)[0]
        nib.save(nib.Nifti1Image(volume, LITS_AFFINE), root / "Test-Data" / f"test-volume-{number}.nii")
    (root / "Training Batch 1" / "._volume-0.nii").write_bytes(b"\x00\x05\x16\x07 not a NIfTI")


@pytest.fixture
def lits_download(tmp_path: Path) -> Path:
    """The download folder holding ``LITS/Training Batch 1`` etc."""
    write_lits_tree(tmp_path / "download" / "LITS")
    return tmp_path / "download"


def test_prepare_lits_converts_the_download_layout(lits_download, tmp_path):
    out = tmp_path / "out"
    path = prepare_lits.prepare_lits(str(lits_download), str(out))
    assert Path(path) == out / "dataset.json"
    index = json.loads(Path(path).read_text())
    assert index["name"] == "LiTS" and index["modality"] == {"0": "CT"} and index["labels"] == LABELS
    assert (index["numTraining"], index["numTest"]) == (3, 2)
    assert index["training"] == [
        {
            "image": f"imagesTr/lits_{n:03d}.nii.gz",
            "label": f"labelsTr/lits_{n:03d}.nii.gz",
            "subject": f"lits_{n:03d}",
            "lits_id": n,
        }
        for n in (0, 1, 28)
    ]
    assert index["test"] == [
        {"image": f"imagesTs/lits_test_{n:03d}.nii.gz", "subject": f"lits_test_{n:03d}", "lits_id": n} for n in (0, 7)
    ]
    root = lits_download / "LITS"
    for number, (folder, extension, shape) in LITS_CASES.items():
        source = root / folder / f"volume-{number}{extension}"
        copied = out / "imagesTr" / f"lits_{number:03d}.nii.gz"
        raw = gzip.decompress(copied.read_bytes())
        assert raw == (gzip.decompress(source.read_bytes()) if extension == ".nii.gz" else source.read_bytes())
        label = nib.load(out / "labelsTr" / f"lits_{number:03d}.nii.gz")
        assert label.get_data_dtype() == np.uint8 and label.shape == shape
        np.testing.assert_allclose(label.affine, LITS_AFFINE)
        np.testing.assert_array_equal(np.asarray(label.dataobj), lits_case(number, shape)[1].astype(np.uint8))
        assert nib.load(copied).get_data_dtype() == np.int16
    test_volume = nib.load(out / "imagesTs" / "lits_test_007.nii.gz")
    np.testing.assert_array_equal(np.asarray(test_volume.dataobj), lits_case(107, LITS_TESTS[7])[0])
    assert not list(out.rglob("*volume*")) and not list(out.rglob("*segmentation*")) and not list(out.rglob(".*"))


def test_prepare_lits_output_reads_with_load_datalist(lits_download, tmp_path):
    out = tmp_path / "out"
    prepare_lits.prepare_lits(str(lits_download), str(out), include_test=False)
    assert json.loads((out / "dataset.json").read_text())["numTest"] == 0 and not (out / "imagesTs").exists()
    training = load_datalist(str(out), "training", val_fraction=0.34, seed=0)
    validation = load_datalist(str(out), "validation", val_fraction=0.34, seed=0)
    assert sorted(e["lits_id"] for e in training + validation) == [0, 1, 28] and len(validation) == 1
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in training + validation)


def test_prepare_lits_aligns_a_label_with_another_affine(lits_download, tmp_path, capsys):
    segmentation = lits_download / "LITS" / "Training Batch 1" / "segmentation-1.nii"
    labels = lits_case(1, LITS_CASES[1][2])[1]
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([0.8, 0.8, 2.0, 1.0])), segmentation)
    prepare_lits.prepare_lits(str(lits_download), str(tmp_path / "out"))
    assert re.search(r"note: the affine of .*segmentation-1\.nii differs", capsys.readouterr().out)
    written = nib.load(tmp_path / "out" / "labelsTr" / "lits_001.nii.gz")
    np.testing.assert_allclose(written.affine, LITS_AFFINE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels.astype(np.uint8))


def test_prepare_lits_command_line(lits_download, tmp_path):
    index = run_prepare(SCRIPTS / "prepare_lits.py", "--lits_dir", lits_download, tmp_path / "out")
    assert index["numTraining"] == 3


def _break_missing_segmentation(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Training Batch 2" / "segmentation-28.nii.gz"
    path.unlink()
    return FileNotFoundError, root / "Training Batch 2" / "volume-28.nii.gz"


def _break_missing_volume(root: Path) -> tuple[type[Exception], Path]:
    (root / "Training Batch 1" / "volume-1.nii").unlink()
    return FileNotFoundError, root / "Training Batch 1" / "segmentation-1.nii"


def _break_label_values(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Training Batch 2" / "segmentation-28.nii.gz"
    labels = lits_case(28, LITS_CASES[28][2])[1]
    labels[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(labels, LITS_AFFINE), path)
    return ValueError, path


def _break_fractional_label(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Training Batch 1" / "segmentation-1.nii"
    labels = lits_case(1, LITS_CASES[1][2])[1]
    labels[1, 1, 1] = 0.5
    nib.save(nib.Nifti1Image(labels, LITS_AFFINE), path)
    return ValueError, path


def _break_shape(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Training Batch 1" / "segmentation-1.nii"
    nib.save(nib.Nifti1Image(np.zeros((10, 8, 7), np.uint8), LITS_AFFINE), path)
    return ValueError, path


def _break_duplicate(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Training Batch 2" / "volume-1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 8, 6), np.int16), LITS_AFFINE), path)
    return ValueError, path


def _break_unreadable(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Test-Data" / "test-volume-7.nii"
    path.write_bytes(b"not a NIfTI file at all")
    return ValueError, path


def _break_four_d(root: Path) -> tuple[type[Exception], Path]:
    path = root / "Training Batch 1" / "volume-0.nii"
    nib.save(nib.Nifti1Image(np.zeros((10, 8, 5, 2), np.int16), LITS_AFFINE), path)
    return ValueError, path


@pytest.mark.parametrize(
    "damage",
    [
        _break_missing_segmentation,
        _break_missing_volume,
        _break_label_values,
        _break_fractional_label,
        _break_shape,
        _break_duplicate,
        _break_unreadable,
        _break_four_d,
    ],
)
def test_prepare_lits_names_the_offending_file(lits_download, tmp_path, damage):
    error, offending = damage(lits_download / "LITS")
    with pytest.raises(error, match=re.escape(str(offending))) as raised:
        prepare_lits.prepare_lits(str(lits_download), str(tmp_path / "out"))
    if damage is _break_shape:
        assert str(lits_download / "LITS" / "Training Batch 1" / "volume-1.nii") in str(raised.value)
    if damage is _break_label_values:
        assert "[3" in str(raised.value)
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


def test_prepare_lits_without_any_volume(tmp_path):
    (tmp_path / "empty" / "Training Batch 1").mkdir(parents=True)
    (tmp_path / "empty" / "Training Batch 1" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no volume-N.nii"):
        prepare_lits.prepare_lits(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_lits.prepare_lits(str(tmp_path / "missing"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
