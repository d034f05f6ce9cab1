"""The cardiac bundle's data scripts: synthetic short-axis phantoms and the ACDC conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import load_datalist
from conftest import ROOT, load_module, run_prepare
from synthetic import cardiac as synthetic

SCRIPTS = ROOT / "bundles" / "cardiac_mr_fcn" / "scripts"
prepare_acdc = load_module(SCRIPTS / "prepare_acdc.py", "cardiac_prepare_acdc")


# --- synthetic phantoms ---


def test_synthetic_dataset_layout_geometry_and_volumes(tmp_path):
    index = json.loads(Path(synthetic.write_dataset(str(tmp_path), num_train=3, num_test=1, seed=2)).read_text())
    assert len(index["training"]) == 6 and len(index["test"]) == 2
    assert index["labels"]["3"] == "LV cavity"
    for entry in index["training"] + index["test"]:
        image, label = nib.load(tmp_path / entry["image"]), nib.load(tmp_path / entry["label"])
        assert image.shape == label.shape and len(image.shape) == 3
        assert np.allclose(image.affine, label.affine)
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
        assert 1.3 <= spacing[0] <= 1.8 and spacing[1] == pytest.approx(spacing[0]) and 7.0 <= spacing[2] <= 10.0
        labels = np.asarray(label.dataobj)
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        voxel_ml = abs(np.linalg.det(label.affine[:3, :3])) / 1000
        for name, value in (("rv", 1), ("myo", 2), ("lv", 3)):
            assert entry[f"{name}_ml"] == pytest.approx((labels == value).sum() * voxel_ml, abs=1e-3)
        pixels = np.asarray(image.dataobj).astype(float)
        assert pixels[labels == 3].mean() > 2 * pixels[labels == 2].mean(), "blood must be brighter than muscle"
    by_subject = {}
    for entry in index["training"]:
        by_subject.setdefault(entry["subject"], {})[entry["phase"]] = entry
    for phases in by_subject.values():
        ed, es = phases["ED"], phases["ES"]
        assert 20 <= 100 * (ed["lv_ml"] - es["lv_ml"]) / ed["lv_ml"] <= 75, "LV ejection fraction out of range"
        assert es["rv_ml"] < ed["rv_ml"]
        assert es["myo_ml"] == pytest.approx(ed["myo_ml"], rel=0.25), "myocardial volume is roughly conserved"


def test_synthetic_is_deterministic_per_seed():
    a = synthetic.generate_subject(4)["ED"][0]
    b = synthetic.generate_subject(4)["ED"][0]
    c = synthetic.generate_subject(5)["ED"][0]
    assert np.array_equal(a, b) and (a.shape != c.shape or not np.array_equal(a, c))


def test_lv_cavity_tapers_from_base_to_apex():
    _, label, _ = synthetic.generate_subject(1)["ED"]
    lv_area = (label == 3).sum(axis=(0, 1))
    present = lv_area[lv_area > 0]
    assert lv_area[0] == lv_area.max() and (np.diff(present) <= 0).all()
    assert (label[..., -1] != 3).all(), "the apical slice holds no cavity"


# --- ACDC conversion ---

#: the tiny ACDC tree: split folder -> patient -> (ED frame, ES frame, number of frames, group)
ACDC_PATIENTS = {
    "training": {"patient001": (1, 3, 4, "DCM"), "patient002": (2, 4, 5, "NOR")},
    "testing": {"patient101": (1, 2, 3, "HCM")},
}
#: 1.5 mm in-plane, 8 mm slices, oblique like a real short-axis stack
ACDC_AFFINE = np.array(
    [[0.0, 1.5, 0.0, -20.0], [-1.5, 0.0, 0.0, 30.0], [0.0, 0.0, 8.0, -40.0], [0.0, 0.0, 0.0, 1.0]], dtype=float
)


def acdc_frame_data(subject: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (float, 20x24x6) and label (uint8, 0..3) of one frame, distinct for every subject and frame."""
    rng = np.random.default_rng(int(subject[-3:]) * 100 + frame)
    image = rng.normal(100.0 + frame, 20.0, (20, 24, 6)).astype(np.float32)
    label = rng.integers(0, 4, (20, 24, 6), dtype=np.uint8)
    return image, label


def write_acdc_tree(database: Path) -> None:
    """A tiny tree in ACDC's exact layout under ``database/``: 2 training patients and 1 testing patient.

    Every frame has an image; labels exist for the ED and ES frames, plus a distractor ``_gt`` on another frame.
    patient101 (testing) has no label for its ES frame.
    """
    for split, patients in ACDC_PATIENTS.items():
        for subject, (ed, es, frames, group) in patients.items():
            folder = database / split / subject
            folder.mkdir(parents=True)
            (folder / "Info.cfg").write_text(
                f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 184.0\nNbFrame: {frames}\nWeight: 95.0\n"
            )
            sequence = np.stack([acdc_frame_data(subject, f)[0] for f in range(1, frames + 1)], axis=-1)
            nib.save(nib.Nifti1Image(sequence, ACDC_AFFINE), folder / f"{subject}_4d.nii.gz")
            distractor = next(f for f in range(1, frames + 1) if f not in (ed, es))
            for frame in range(1, frames + 1):
                image, label = acdc_frame_data(subject, frame)
                nib.save(nib.Nifti1Image(image, ACDC_AFFINE), folder / f"{subject}_frame{frame:02d}.nii.gz")
                if frame in (ed, distractor) or (frame == es and split == "training"):
                    nib.save(nib.Nifti1Image(label, ACDC_AFFINE), folder / f"{subject}_frame{frame:02d}_gt.nii.gz")


@pytest.fixture
def acdc_download(tmp_path: Path) -> Path:
    """The download folder holding ``ACDC/database/{training,testing}/patientXXX``."""
    write_acdc_tree(tmp_path / "download" / "ACDC" / "database")
    return tmp_path / "download"


def test_prepare_acdc_converts_the_download_layout(acdc_download, tmp_path):
    out = tmp_path / "out"
    assert prepare_acdc.prepare_acdc(str(acdc_download), str(out)) == str(out / "dataset.json")
    index = json.loads((out / "dataset.json").read_text())
    assert index["modality"] == {"0": "MRI"}
    assert index["labels"] == {"0": "background", "1": "RV cavity", "2": "LV myocardium", "3": "LV cavity"}
    assert (index["numTraining"], index["numTest"]) == (4, 2)
    assert [(e["subject"], e["phase"]) for e in index["training"]] == [
        ("patient001", "ED"),
        ("patient001", "ES"),
        ("patient002", "ED"),
        ("patient002", "ES"),
    ]
    assert index["training"][0] == {
        "image": "imagesTr/patient001_ED.nii.gz",
        "label": "labelsTr/patient001_ED.nii.gz",
        "subject": "patient001",
        "phase": "ED",
        "group": "DCM",
        "height_cm": 184.0,
        "weight_kg": 95.0,
    }
    assert [e["group"] for e in index["training"]] == ["DCM", "DCM", "NOR", "NOR"]
    source = acdc_download / "ACDC" / "database"
    for split, tag, entries in (("training", "Tr", index["training"]), ("testing", "Ts", index["test"])):
        for entry in entries:
            subject, phase = entry["subject"], entry["phase"]
            ed, es, _, _ = ACDC_PATIENTS[split][subject]
            frame = f"{subject}_frame{(ed if phase == 'ED' else es):02d}"
            assert entry["image"] == f"images{tag}/{subject}_{phase}.nii.gz"
            assert (out / entry["image"]).read_bytes() == (source / split / subject / f"{frame}.nii.gz").read_bytes()
            if "label" in entry:
                assert entry["label"] == f"labels{tag}/{subject}_{phase}.nii.gz"
                gt = source / split / subject / f"{frame}_gt.nii.gz"
                assert (out / entry["label"]).read_bytes() == gt.read_bytes()
    # the frame chosen is the one Info.cfg names, not the distractor: check the content through nibabel too
    copied = nib.load(out / "imagesTr" / "patient002_ED.nii.gz")
    np.testing.assert_allclose(copied.affine, ACDC_AFFINE)
    assert copied.shape == (20, 24, 6)
    np.testing.assert_array_equal(copied.get_fdata(), acdc_frame_data("patient002", 2)[0])
    label = np.asarray(nib.load(out / "labelsTr" / "patient002_ES.nii.gz").dataobj)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(label, acdc_frame_data("patient002", 4)[1])
    assert not list(out.rglob("*4d*")) and not list(out.rglob("*frame*"))
    tests = {e["phase"]: e for e in index["test"]}
    assert set(tests) == {"ED", "ES"} and {e["subject"] for e in index["test"]} == {"patient101"}
    assert "label" in tests["ED"] and "label" not in tests["ES"], "a testing frame without _gt has no label"
    assert tests["ES"]["group"] == "HCM"


def test_prepare_acdc_output_reads_with_load_datalist(acdc_download, tmp_path):
    out = tmp_path / "out"
    prepare_acdc.prepare_acdc(str(acdc_download), str(out))
    training = load_datalist(str(out), "training", val_fraction=0.25, seed=0)
    validation = load_datalist(str(out), "validation", val_fraction=0.25, seed=0)
    assert training and validation, "a fraction of the training frames is held out"
    frames = sorted((e["subject"], e["phase"]) for e in training + validation)
    assert frames == [("patient001", "ED"), ("patient001", "ES"), ("patient002", "ED"), ("patient002", "ES")]
    for entry in training + validation:
        assert Path(entry["image"]).is_absolute() and Path(entry["image"]).is_file()
        assert Path(entry["label"]).is_file() and entry["phase"] in ("ED", "ES") and entry["group"]
    test = load_datalist(str(out), "test", require_label=False)
    assert sorted(e["phase"] for e in test) == ["ED", "ES"]


@pytest.mark.parametrize("root", ["ACDC", "ACDC/database", "ACDC/database/training"])
def test_prepare_acdc_accepts_other_roots(acdc_download, tmp_path, root):
    index = json.loads(Path(prepare_acdc.prepare_acdc(str(acdc_download / root), str(tmp_path / "out"))).read_text())
    assert [e["subject"] for e in index["training"]] == ["patient001"] * 2 + ["patient002"] * 2
    assert index["numTest"] == (0 if root.endswith("training") else 2)


def test_prepare_acdc_testing_folder_alone_is_the_test_split(acdc_download, tmp_path):
    index = prepare_acdc.find_split_dirs(acdc_download / "ACDC" / "database" / "testing")
    assert index == {"test": acdc_download / "ACDC" / "database" / "testing"}


def test_prepare_acdc_command_line(acdc_download, tmp_path):
    index = run_prepare(SCRIPTS / "prepare_acdc.py", "--acdc_dir", acdc_download, tmp_path / "out")
    assert index["numTraining"] == 4


def _break_no_info(patient: Path) -> tuple[type[Exception], Path]:
    (patient / "Info.cfg").unlink()
    return FileNotFoundError, patient / "Info.cfg"


def _break_info_without_es(patient: Path) -> tuple[type[Exception], Path]:
    info = patient / "Info.cfg"
    info.write_text("".join(line for line in info.read_text().splitlines(True) if not line.startswith("ES")))
    return ValueError, info


def _break_missing_es_frame(patient: Path) -> tuple[type[Exception], Path]:
    frame = patient / "patient002_frame04.nii.gz"
    frame.unlink()
    return FileNotFoundError, frame


def _break_missing_training_gt(patient: Path) -> tuple[type[Exception], Path]:
    gt = patient / "patient002_frame02_gt.nii.gz"
    gt.unlink()
    return FileNotFoundError, gt


@pytest.mark.parametrize(
    "damage", [_break_no_info, _break_info_without_es, _break_missing_es_frame, _break_missing_training_gt]
)
def test_prepare_acdc_names_the_offending_file(acdc_download, tmp_path, damage):
    error, offending = damage(acdc_download / "ACDC" / "database" / "training" / "patient002")
    with pytest.raises(error, match=re.escape(str(offending))):
        prepare_acdc.prepare_acdc(str(acdc_download), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "nothing is written when the input is incomplete"


def test_prepare_acdc_without_any_patient(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no training/ or testing/ folder"):
        prepare_acdc.prepare_acdc(str(tmp_path / "empty"), str(tmp_path / "out"))
