"""The cardiac short-axis bundle's own behaviour (the contract every bundle keeps is in test_bundle_contract.py):
clinical indices against the phantoms' known volumes, ED/ES pairing at inference, transposed grids, cine input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import ROOT, load_module, read_csv, segment
from synthetic.cardiac import generate_subject

BUNDLE = ROOT / "bundles" / "cardiac_mr_fcn"


@pytest.fixture(scope="module")
def trained(quick_run) -> dict:
    """The bundle's quick demo run: data set, weights, evaluation (``out/eval``) and inference (``out/inference``)."""
    run = quick_run(BUNDLE.name)
    return {"ckpt": run.ckpt, "data": run.data, "out": run.out}


def test_evaluation_scores_and_clinical_errors(trained):
    dataset, evaluation = trained["data"], trained["out"] / "eval"
    rows = read_csv(evaluation / "metrics.csv")
    assert sorted((r["subject"], r["phase"]) for r in rows) == [("subject006", "ED"), ("subject006", "ES")]
    summary = json.loads((evaluation / "metrics_summary.json").read_text())
    # chance: a label map with the class frequencies but no spatial information has Dice equal to the class's
    # fraction of the volume (under 3 % for every class here); a short training run must be far above it
    for name in ("lv", "myo", "rv"):
        assert summary[f"dice_{name}"]["mean"] > 0.5, (name, summary[f"dice_{name}"])
        assert 0 < summary[f"hd95_{name}_mm"]["mean"] < 40
    # the ground-truth volumes are measured in each stack's own grid: they equal the phantom's known volumes
    index = json.loads((dataset / "dataset.json").read_text())
    known = {(e["subject"], e["phase"]): e for e in index["test"]}
    for row in rows:
        for name in ("lv", "myo", "rv"):
            assert float(row[f"true_{name}_ml"]) == pytest.approx(
                known[row["subject"], row["phase"]][f"{name}_ml"], abs=2e-3
            )
    (subject,) = read_csv(evaluation / "subjects.csv")
    ed, es = known["subject006", "ED"], known["subject006", "ES"]
    true_ef = 100 * (ed["lv_ml"] - es["lv_ml"]) / ed["lv_ml"]  # from the volumes rounded to 1e-3 mL
    assert float(subject["true_lv_ef_percent"]) == pytest.approx(true_ef, abs=0.01)
    assert float(subject["abs_error_lv_ef_percent"]) == pytest.approx(
        abs(float(subject["pred_lv_ef_percent"]) - float(subject["true_lv_ef_percent"]))
    )
    assert float(subject["abs_error_lv_ef_percent"]) < 25


def test_inference_pairs_phases_into_clinical_indices(trained):
    """The demo segmented subject006's ED and ES stacks: volumes per stack, EF and mass per subject."""
    outputs = trained["out"] / "inference"
    measurements = {r["case"]: r for r in read_csv(outputs / "measurements.csv")}
    assert set(measurements) == {"subject006_ED", "subject006_ES"}
    assert measurements["subject006_ED"]["subject"] == "subject006" and measurements["subject006_ED"]["phase"] == "ED"
    (clinical,) = read_csv(outputs / "clinical.csv")
    assert clinical["subject"] == "subject006"
    lv_edv, lv_esv = float(clinical["lv_edv_ml"]), float(clinical["lv_esv_ml"])
    assert lv_edv == pytest.approx(float(measurements["subject006_ED"]["lv_ml"]))
    assert float(clinical["lv_ef_percent"]) == pytest.approx(100 * (lv_edv - lv_esv) / lv_edv)
    assert float(clinical["myo_mass_ed_g"]) == pytest.approx(1.05 * float(measurements["subject006_ED"]["myo_ml"]))
    seg = nib.load(outputs / "subject006_ED_seg.nii.gz")
    voxel_ml = abs(np.linalg.det(seg.affine[:3, :3])) / 1000
    assert lv_edv == pytest.approx((np.asarray(seg.dataobj) == 3).sum() * voxel_ml, rel=1e-6)


def write_stack(path: Path, image: np.ndarray, affine: np.ndarray) -> None:
    """Save a NIfTI stack."""
    nib.save(nib.Nifti1Image(image, affine), path)


def test_prediction_lines_up_with_a_transposed_stack(trained, tmp_path):
    """The same stack stored with its in-plane axes swapped: the segmentation must follow it in its own grid."""
    dataset = trained["data"]
    entry = json.loads((dataset / "dataset.json").read_text())["test"][0]
    image, label = nib.load(dataset / entry["image"]), nib.load(dataset / entry["label"])
    swapped = image.affine.copy()
    swapped[:, [0, 1]] = image.affine[:, [1, 0]]
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_stack(inputs / "case.nii.gz", np.ascontiguousarray(np.asarray(image.dataobj).transpose(1, 0, 2)), swapped)
    segment(BUNDLE, inputs, tmp_path / "out", trained["ckpt"])
    pred = np.asarray(nib.load(tmp_path / "out" / "case_seg.nii.gz").dataobj).transpose(1, 0, 2)
    truth = np.asarray(label.dataobj)
    dice = 2 * ((pred == 3) & (truth == 3)).sum() / ((pred == 3).sum() + (truth == 3).sum())
    assert dice > 0.6, f"LV cavity Dice {dice:.3f} in the transposed grid"


def preprocessing() -> Compose:
    """The bundle's deterministic training preprocessing, as the config builds it."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    return Compose(parser.get_parsed_content("preprocessing"))


@pytest.mark.parametrize("case, message", [("image_2d", "expected 3"), ("two_channels", "expected 1")])
def test_single_slice_or_cine_training_image_is_rejected_naming_the_file(tmp_path, case, message):
    image, label, affine = generate_subject(3, size=64)["ED"]
    if case == "image_2d":
        image = image[..., 0]
    elif case == "two_channels":
        image = np.stack([image, image], axis=-1)  # X, Y, Z, T: a cine sequence given instead of one frame
    write_stack(tmp_path / "img.nii.gz", image, affine)
    write_stack(tmp_path / "lab.nii.gz", label, affine)
    with pytest.raises(Exception) as err:
        preprocessing()({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    text = str(err.value.__cause__ or err.value)
    assert "img.nii.gz" in text and message in text, text


def test_the_lv_cavity_is_ringed_by_myocardium_in_the_phantoms_and_a_leak_is_measured():
    clinical = load_module(BUNDLE / "scripts" / "clinical.py", "cardiac_clinical")
    ring = np.zeros((9, 9, 2), np.int16)
    ring[2:7, 2:7] = 2  # myocardium
    ring[3:6, 3:6] = 3  # LV cavity: its 12 border neighbours are all myocardium
    assert clinical.lv_enclosed_percent(ring) == 100.0
    ring[3:6, 6, 1] = 1  # one slice's cavity touches the RV on one side: 3 of its 12 border neighbours
    assert clinical.lv_enclosed_percent(ring) == pytest.approx(100 * 21 / 24)
    assert np.isnan(clinical.lv_enclosed_percent(np.zeros((4, 4, 2), np.int16)))
    for phase, (_, label, _) in generate_subject(seed=3, size=64).items():
        assert clinical.lv_enclosed_percent(label) > 95.0, phase
