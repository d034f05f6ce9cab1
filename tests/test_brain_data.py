"""The brain tissue bundle's data scripts: synthetic multimodal phantoms and the MRBrainS18 conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import load_datalist
from conftest import ROOT, load_module, run_prepare
from synthetic import brain as synthetic

SCRIPTS = ROOT / "bundles" / "brain_tissue_cnn2d" / "scripts"
prepare_mrbrains = load_module(SCRIPTS / "prepare_mrbrains.py", "brain_prepare_mrbrains")

LABELS = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}


# --- synthetic phantoms ---


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic data set: 2 training and 1 test subject, 64 x 64 pixels, T1, T2 and FLAIR."""
    root = tmp_path_factory.mktemp("brain_synthetic")
    synthetic.write_dataset(str(root), num_train=2, num_test=1, size=64, seed=3)
    return root


def test_synthetic_dataset_layout_and_geometry(synthetic_dir):
    index = json.loads((synthetic_dir / "dataset.json").read_text())
    assert index["modality"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    assert index["labels"] == LABELS
    assert (index["numTraining"], index["numTest"]) == (2, 1)
    assert index["training"][1] == {
        "image": [f"imagesTr/subject001_{c:04d}.nii.gz" for c in range(3)],
        "label": "labelsTr/subject001.nii.gz",
        "subject": "subject001",
    }
    assert index["test"][0]["image"][2] == "imagesTs/subject002_0002.nii.gz"
    assert index["test"][0]["label"] == "labelsTs/subject002.nii.gz"
    assert sorted(p.name for p in (synthetic_dir / "imagesTr").iterdir()) == sorted(
        f"subject00{s}_000{c}.nii.gz" for s in range(2) for c in range(3)
    )
    for entry in index["training"] + index["test"]:
        label = nib.load(synthetic_dir / entry["label"])
        assert label.get_data_dtype() == np.uint8 and label.shape[:2] == (64, 64) and 24 <= label.shape[2] <= 40
        spacing = np.sqrt((label.affine[:3, :3] ** 2).sum(axis=0))
        assert 0.9 <= spacing[0] <= 1.2 and spacing[1] == pytest.approx(spacing[0]) and 1.0 <= spacing[2] <= 3.0
        for path in entry["image"]:
            image = nib.load(synthetic_dir / path)
            assert image.shape == label.shape and image.get_data_dtype() == np.float32
            np.testing.assert_allclose(image.affine, label.affine)


def test_synthetic_labels_and_tissue_contrasts(synthetic_dir):
    index = json.loads((synthetic_dir / "dataset.json").read_text())
    for entry in index["training"] + index["test"]:
        labels = np.asarray(nib.load(synthetic_dir / entry["label"]).dataobj)
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        fractions = np.bincount(labels.ravel(), minlength=4) / labels.size
        assert 0.5 < fractions[0] < 0.95, "the head sits in a field of view with air around it"
        assert all(0.01 < f < 0.25 for f in fractions[1:]), f"implausible tissue fractions {fractions}"
        t1, t2, flair = (np.asarray(nib.load(synthetic_dir / p).dataobj) for p in entry["image"])
        mean = {
            name: [image[labels == c].mean() for c in range(4)]
            for name, image in zip("T1 T2 FLAIR".split(), (t1, t2, flair))
        }
        assert mean["T1"][3] > mean["T1"][2] > mean["T1"][1], "T1: white matter > grey matter > CSF"
        assert mean["T2"][1] > mean["T2"][2] > mean["T2"][3], "T2: CSF > grey matter > white matter"
        assert mean["FLAIR"][1] < 0.5 * mean["FLAIR"][2], "FLAIR: CSF is suppressed"
        assert mean["FLAIR"][2] > mean["FLAIR"][3], "FLAIR: grey matter slightly brighter than white matter"
        assert all(np.isfinite(image).all() and (image >= 0).all() for image in (t1, t2, flair))


def test_synthetic_default_geometry_and_anatomy():
    images, label, affine = synthetic.generate_subject(7, modalities=("T1", "T1_IR"))
    assert len(images) == 2 and all(i.shape == label.shape and i.dtype == np.float32 for i in images)
    assert 96 <= label.shape[0] <= 128 and 96 <= label.shape[1] <= 128 and 24 <= label.shape[2] <= 40
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    assert 0.9 <= spacing[0] <= 1.2 and 1.0 <= spacing[2] <= 3.0
    # the ventricles: CSF inside the white matter near the centre, on both sides of the midline
    x, y = np.asarray(label.shape[:2]) // 2
    centre = label[x - 15 : x + 15, y - 15 : y + 15]
    assert (centre == 1).sum() > 0 and (centre == 3).sum() > (centre == 1).sum()
    # the cortex: grey matter between the CSF outside the brain and the white matter, on every slice with a brain
    for k in range(label.shape[2]):
        if (label[..., k] == 3).sum() > 100:
            assert (label[..., k] == 2).sum() > 0.1 * (label[..., k] == 3).sum()
    ir = images[1]
    assert ir[label == 3].mean() > 1.8 * ir[label == 2].mean() > 1.8 * ir[label == 1].mean(), "T1_IR: strong contrast"


def test_synthetic_four_d_option(tmp_path):
    index = json.loads(Path(synthetic.write_dataset(str(tmp_path), 1, 1, size=40, seed=5, four_d=True)).read_text())
    assert index["training"][0]["image"] == "imagesTr/subject000.nii.gz"
    assert index["test"][0]["image"] == "imagesTs/subject001.nii.gz"
    stack = nib.load(tmp_path / "imagesTr" / "subject000.nii.gz")
    label = nib.load(tmp_path / "labelsTr" / "subject000.nii.gz")
    assert stack.shape == label.shape + (3,) and stack.get_data_dtype() == np.float32
    np.testing.assert_allclose(stack.affine, label.affine)
    images, labels, _ = synthetic.generate_subject(5 * 100003, size=40)
    np.testing.assert_array_equal(np.asarray(stack.dataobj), np.stack(images, axis=-1))
    np.testing.assert_array_equal(np.asarray(label.dataobj), labels)


def test_synthetic_is_deterministic_per_seed():
    a, la, aa = synthetic.generate_subject(4, size=40)
    b, lb, ab = synthetic.generate_subject(4, size=40)
    c, lc, _ = synthetic.generate_subject(5, size=40)
    assert all(np.array_equal(i, j) for i, j in zip(a, b)) and np.array_equal(la, lb) and np.array_equal(aa, ab)
    assert lc.shape != la.shape or not np.array_equal(lc, la)
    # the anatomy and each modality's image do not depend on the other modalities asked for
    (flair,), lf, _ = synthetic.generate_subject(4, size=40, modalities=("FLAIR",))
    assert np.array_equal(lf, la) and np.array_equal(flair, a[2])


def test_synthetic_unknown_modality_gets_a_fixed_contrast():
    first, second = synthetic.contrast("MT"), synthetic.contrast("MT")
    assert first == second and first["air"] == 0.0
    brain = sorted(first[t] for t in ("csf", "gm", "wm"))
    assert min(np.diff(brain)) >= 0.1
    assert synthetic.contrast("t2w") == synthetic.contrast("T2")


def test_synthetic_output_reads_with_load_datalist(synthetic_dir):
    training = load_datalist(str(synthetic_dir), "training", val_fraction=0.5, seed=0)
    validation = load_datalist(str(synthetic_dir), "validation", val_fraction=0.5, seed=0)
    assert len(training) == len(validation) == 1
    for entry in training + validation:
        assert isinstance(entry["image"], list) and len(entry["image"]) == 3
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in entry["image"])
        assert Path(entry["label"]).is_file() and entry["subject"].startswith("subject")
    test = load_datalist(str(synthetic_dir), "test")
    assert [e["subject"] for e in test] == ["subject002"]


# --- MRBrainS18 conversion ---

#: the tiny MRBrainS18 tree: subject folder -> volume shape
MRBRAINS_SUBJECTS = {"070": (16, 16, 4), "1": (16, 12, 4)}
#: the files in each subject's pre/ folder (registered and unregistered), as in the download
MRBRAINS_PRE = {"T1": "reg_T1.nii.gz", "T1_IR": "reg_IR.nii.gz", "FLAIR": "FLAIR.nii.gz"}
#: 0.958 x 0.958 x 3 mm, axial, as MRBrainS18's FLAIR grid
MRBRAINS_AFFINE = np.diag([0.958, 0.958, 3.0, 1.0])
MRBRAINS_AFFINE[:3, 3] = (-100.0, -110.0, -70.0)


def mrbrains_volumes(subject: str) -> dict[str, np.ndarray]:
    """Modalities (float32) and label (uint8, every value 0..10 present) of one subject, distinct per subject."""
    shape = MRBRAINS_SUBJECTS[subject]
    rng = np.random.default_rng(int(subject))
    volumes = {m: rng.normal(100.0 * (i + 1), 20.0, shape).astype(np.float32) for i, m in enumerate(MRBRAINS_PRE)}
    label = rng.integers(0, 11, shape).astype(np.uint8)
    label.flat[:11] = np.arange(11)
    volumes["segm"] = label
    return volumes


def write_mrbrains_tree(training: Path) -> None:
    """A tiny tree in MRBrainS18's layout under ``training/``: 2 subjects, registered and unregistered scans."""
    for subject in MRBRAINS_SUBJECTS:
        folder = training / subject
        (folder / "pre").mkdir(parents=True)
        (folder / "orig").mkdir()
        volumes = mrbrains_volumes(subject)
        for modality, name in MRBRAINS_PRE.items():
            nib.save(nib.Nifti1Image(volumes[modality], MRBRAINS_AFFINE), folder / "pre" / name)
            nib.save(nib.Nifti1Image(volumes[modality] + 1, MRBRAINS_AFFINE), folder / "orig" / name)
        for name in ("T1.nii.gz", "IR.nii.gz"):  # the scans before registration, on another grid
            nib.save(nib.Nifti1Image(np.zeros((20, 20, 10), np.float32), np.eye(4)), folder / "pre" / name)
        segm = nib.Nifti1Image(volumes["segm"], MRBRAINS_AFFINE)
        segm.header.set_xyzt_units("mm", "sec")
        nib.save(segm, folder / "segm.nii.gz")


@pytest.fixture
def mrbrains_download(tmp_path: Path) -> Path:
    """The download folder holding ``MRBrainS18/training/{1,070}``."""
    write_mrbrains_tree(tmp_path / "download" / "MRBrainS18" / "training")
    return tmp_path / "download" / "MRBrainS18"


def test_prepare_mrbrains_converts_the_download_layout(mrbrains_download, tmp_path):
    out = tmp_path / "out"
    path = prepare_mrbrains.prepare_mrbrains(str(mrbrains_download), str(out))
    assert Path(path) == out / "dataset.json"
    index = json.loads(Path(path).read_text())
    assert index["modality"] == {"0": "T1", "1": "T1_IR", "2": "FLAIR"}
    assert index["labels"] == LABELS
    assert (index["numTraining"], index["numTest"]) == (2, 0)
    assert index["training"] == [
        {
            "image": [f"imagesTr/{s}_{c:04d}.nii.gz" for c in range(3)],
            "label": f"labelsTr/{s}.nii.gz",
            "subject": s,
        }
        for s in ("1", "070")  # numeric order
    ]
    training = mrbrains_download / "training"
    for entry in index["training"]:
        subject = entry["subject"]
        for relative, name in zip(entry["image"], MRBRAINS_PRE.values()):
            assert (out / relative).read_bytes() == (training / subject / "pre" / name).read_bytes()
        label = nib.load(out / entry["label"])
        assert label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(label.affine, MRBRAINS_AFFINE)
        assert label.header.get_xyzt_units() == ("mm", "sec")
        mapped = np.asarray(label.dataobj)
        source = mrbrains_volumes(subject)["segm"]
        expected = {0: 0, 1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: 0, 8: 0, 9: 0, 10: 0}
        for value, ours in expected.items():
            assert (mapped[source == value] == ours).all(), f"MRBrainS label {value} must become {ours}"
        assert set(np.unique(mapped)) == {0, 1, 2, 3}
    assert not list(out.rglob("*reg_*")) and not list(out.rglob("*segm*"))


def test_prepare_mrbrains_output_reads_with_load_datalist(mrbrains_download, tmp_path):
    out = tmp_path / "out"
    prepare_mrbrains.prepare_mrbrains(str(mrbrains_download), str(out))
    training = load_datalist(str(out), "training", val_fraction=0.5, seed=0)
    validation = load_datalist(str(out), "validation", val_fraction=0.5, seed=0)
    assert sorted(e["subject"] for e in training + validation) == ["070", "1"] and len(validation) == 1
    assert all(len(e["image"]) == 3 and all(Path(p).is_file() for p in e["image"]) for e in training + validation)


def test_prepare_mrbrains_subject_folders_and_unregistered_names(mrbrains_download, tmp_path):
    """The folder of subject folders works as the root; ``T1``/``T1_IR`` names serve when ``reg_`` files are absent."""
    training = mrbrains_download / "training"
    for subject in MRBRAINS_SUBJECTS:
        pre = training / subject / "pre"
        (pre / "reg_T1.nii.gz").replace(pre / "T1.nii.gz")
        (pre / "IR.nii.gz").unlink()
        (pre / "reg_IR.nii.gz").replace(pre / "T1_IR.nii.gz")
    out = tmp_path / "out"
    index = json.loads(
        Path(prepare_mrbrains.prepare_mrbrains(str(training), str(out), modalities=("FLAIR", "T1"))).read_text()
    )
    assert index["modality"] == {"0": "FLAIR", "1": "T1"}
    entry = index["training"][1]
    assert entry["subject"] == "070" and entry["image"] == ["imagesTr/070_0000.nii.gz", "imagesTr/070_0001.nii.gz"]
    assert (out / entry["image"][1]).read_bytes() == (training / "070" / "pre" / "T1.nii.gz").read_bytes()


def test_prepare_mrbrains_command_line(mrbrains_download, tmp_path):
    index = run_prepare(SCRIPTS / "prepare_mrbrains.py", "--mrbrains_dir", mrbrains_download, tmp_path / "out")
    assert index["numTraining"] == 2


def _break_missing_flair(subject: Path) -> tuple[type[Exception], Path]:
    (subject / "pre" / "FLAIR.nii.gz").unlink()
    return FileNotFoundError, subject / "pre" / "FLAIR.nii.gz"


def _break_missing_ir(subject: Path) -> tuple[type[Exception], Path]:
    for name in ("reg_IR.nii.gz", "IR.nii.gz"):
        (subject / "pre" / name).unlink()
    return FileNotFoundError, subject / "pre" / "reg_IR.nii.gz"


def _break_missing_segm(subject: Path) -> tuple[type[Exception], Path]:
    (subject / "segm.nii.gz").unlink()
    return FileNotFoundError, subject / "segm.nii.gz"


def _break_modality_shape(subject: Path) -> tuple[type[Exception], Path]:
    path = subject / "pre" / "FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.float32), MRBRAINS_AFFINE), path)
    return ValueError, path


def _break_label_shape(subject: Path) -> tuple[type[Exception], Path]:
    path = subject / "segm.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.uint8), MRBRAINS_AFFINE), path)
    return ValueError, path


def _break_label_values(subject: Path) -> tuple[type[Exception], Path]:
    path = subject / "segm.nii.gz"
    nib.save(nib.Nifti1Image(np.full((16, 16, 4), 12, np.uint8), MRBRAINS_AFFINE), path)
    return ValueError, path


@pytest.mark.parametrize(
    "damage",
    [
        _break_missing_flair,
        _break_missing_ir,
        _break_missing_segm,
        _break_modality_shape,
        _break_label_shape,
        _break_label_values,
    ],
)
def test_prepare_mrbrains_names_the_offending_file(mrbrains_download, tmp_path, damage):
    subject = mrbrains_download / "training" / "070"  # the last subject: the first one would pass the checks
    error, offending = damage(subject)
    with pytest.raises(error, match=re.escape(str(offending))) as raised:
        prepare_mrbrains.prepare_mrbrains(str(mrbrains_download), str(tmp_path / "out"))
    if "shape" in damage.__name__:
        assert str(subject / "pre" / "reg_T1.nii.gz") in str(raised.value), "a shape mismatch names both files"
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


def test_prepare_mrbrains_without_any_subject(tmp_path):
    (tmp_path / "empty" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no training/ folder and no numbered subject folders"):
        prepare_mrbrains.prepare_mrbrains(str(tmp_path / "empty"), str(tmp_path / "out"))
