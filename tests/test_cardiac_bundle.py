"""The cardiac short-axis bundle end to end: metadata, training, evaluation, clinical indices, inference, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import (
    ROOT,
    assert_bundle_verifies,
    assert_resumes_one_epoch,
    assert_torchrun_trains_one_epoch,
    assert_torchscript_matches,
    check,
    config_list,
    epoch_losses,
    load_module,
    monai_bundle,
    read_csv,
    train_bundle,
)

BUNDLE = ROOT / "bundles" / "cardiac_mr_fcn"
synthetic = load_module(BUNDLE / "scripts" / "synthetic.py", "cardiac_synthetic_for_bundle_tests")
EPOCHS = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 training subjects (5 train + 1 held out) and 1 test subject, ED and ES each."""
    root = tmp_path_factory.mktemp("cardiac_data")
    synthetic.write_dataset(str(root), num_train=6, num_test=1, seed=11)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """Train the bundle briefly through the CLI; return paths and the training log."""
    return train_bundle(
        BUNDLE,
        dataset,
        tmp_path_factory.mktemp("cardiac_run"),
        max_epochs=EPOCHS,
        val_interval=4,
        num_workers=0,
        learning_rate=0.003,
        **{"train#dataloader#batch_size": 2},
    )


def test_metadata_verifies_offline_and_network_matches_it():
    assert_bundle_verifies(BUNDLE, "train.json")


def test_training_lowers_loss_and_beats_chance(trained):
    losses = epoch_losses(trained["log"])
    assert len(losses) == EPOCHS
    first, last = np.mean(losses[1]), np.mean(losses[EPOCHS])
    assert last < 0.6 * first, f"loss went from {first:.3f} to {last:.3f}"
    assert trained["ckpt"].is_file(), "no best checkpoint written"
    assert list((trained["work"] / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_evaluation_scores_and_clinical_errors(trained, dataset, tmp_path):
    check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "train.json", "evaluate.json"),
            bundle_root=BUNDLE,
            dataset_dir=dataset,
            ckpt_path=trained["ckpt"],
            output_dir=tmp_path,
            num_workers=0,
        )
    )
    rows = read_csv(tmp_path / "metrics.csv")
    assert sorted((r["subject"], r["phase"]) for r in rows) == [("subject006", "ED"), ("subject006", "ES")]
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
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
    (subject,) = read_csv(tmp_path / "subjects.csv")
    ed, es = known["subject006", "ED"], known["subject006", "ES"]
    true_ef = 100 * (ed["lv_ml"] - es["lv_ml"]) / ed["lv_ml"]  # from the volumes rounded to 1e-3 mL
    assert float(subject["true_lv_ef_percent"]) == pytest.approx(true_ef, abs=0.01)
    assert float(subject["abs_error_lv_ef_percent"]) == pytest.approx(
        abs(float(subject["pred_lv_ef_percent"]) - float(subject["true_lv_ef_percent"]))
    )
    assert float(subject["abs_error_lv_ef_percent"]) < 25


def write_stack(path: Path, image: np.ndarray, affine: np.ndarray) -> None:
    """Save a NIfTI stack."""
    nib.save(nib.Nifti1Image(image, affine), path)


def test_inference_keeps_each_input_grid_and_reports_bad_files(trained, dataset, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    index = json.loads((dataset / "dataset.json").read_text())
    for entry in index["test"]:  # ED and ES of subject006: their clinical indices must be reported
        (inputs / Path(entry["image"]).name).write_bytes((dataset / entry["image"]).read_bytes())
    # another subject, one phase only, stored as float32 with its axes permuted in-plane (a transposed grid)
    image, _, affine = synthetic.generate_subject(99)["ED"]
    permuted = affine.copy()
    permuted[:, [0, 1]] = affine[:, [1, 0]]
    write_stack(inputs / "other_ED.nii", np.ascontiguousarray(image.transpose(1, 0, 2)).astype(np.float32), permuted)
    write_stack(inputs / "flat.nii.gz", np.ones((40, 40), np.float32), np.eye(4))
    nan_image = image.astype(np.float32)
    nan_image[3, 3, 1] = np.nan
    write_stack(inputs / "nan.nii.gz", nan_image, affine)
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "inference.json"),
            bundle_root=BUNDLE,
            input_dir=inputs,
            output_dir=outputs,
            ckpt_path=trained["ckpt"],
        )
    )
    written = sorted(p.name for p in outputs.glob("*_seg.nii.gz"))
    assert written == ["other_ED_seg.nii.gz", "subject006_ED_seg.nii.gz", "subject006_ES_seg.nii.gz"]
    for name in written:
        source = nib.load(next(inputs.glob(name.replace("_seg.nii.gz", ".nii*"))))
        seg = nib.load(outputs / name)
        assert seg.shape == source.shape, name
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4, err_msg=name)
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {"flat.nii.gz", "nan.nii.gz", "broken.nii.gz"}
    assert "flat.nii.gz" in failures["flat.nii.gz"] and "expected 3" in failures["flat.nii.gz"]
    assert "NaN" in failures["nan.nii.gz"]
    assert "skipped" in out
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"
    measurements = {r["case"]: r for r in read_csv(outputs / "measurements.csv")}
    assert set(measurements) == {"other_ED", "subject006_ED", "subject006_ES"}
    assert measurements["other_ED"]["subject"] == "other" and measurements["other_ED"]["phase"] == "ED"
    (clinical,) = read_csv(outputs / "clinical.csv")  # only subject006 has both phases
    assert clinical["subject"] == "subject006"
    lv_edv, lv_esv = float(clinical["lv_edv_ml"]), float(clinical["lv_esv_ml"])
    assert lv_edv == pytest.approx(float(measurements["subject006_ED"]["lv_ml"]))
    assert float(clinical["lv_ef_percent"]) == pytest.approx(100 * (lv_edv - lv_esv) / lv_edv)
    assert float(clinical["myo_mass_ed_g"]) == pytest.approx(1.05 * float(measurements["subject006_ED"]["myo_ml"]))


def test_prediction_lines_up_with_a_transposed_stack(trained, dataset, tmp_path):
    """The same stack stored with its in-plane axes swapped: the segmentation must follow it in its own grid."""
    entry = json.loads((dataset / "dataset.json").read_text())["test"][0]
    image, label = nib.load(dataset / entry["image"]), nib.load(dataset / entry["label"])
    swapped = image.affine.copy()
    swapped[:, [0, 1]] = image.affine[:, [1, 0]]
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_stack(inputs / "case.nii.gz", np.ascontiguousarray(np.asarray(image.dataobj).transpose(1, 0, 2)), swapped)
    check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "inference.json"),
            bundle_root=BUNDLE,
            input_dir=inputs,
            output_dir=tmp_path / "out",
            ckpt_path=trained["ckpt"],
        )
    )
    pred = np.asarray(nib.load(tmp_path / "out" / "case_seg.nii.gz").dataobj).transpose(1, 0, 2)
    truth = np.asarray(label.dataobj)
    dice = 2 * ((pred == 3) & (truth == 3)).sum() / ((pred == 3).sum() + (truth == 3).sum())
    assert dice > 0.6, f"LV cavity Dice {dice:.3f} in the transposed grid"


def test_training_resumes_from_last_checkpoint(trained, dataset):
    assert_resumes_one_epoch(BUNDLE, trained, dataset, EPOCHS, val_interval=4, num_workers=0)


def test_ckpt_export_torchscript_matches(trained, tmp_path):
    assert_torchscript_matches(BUNDLE, trained["ckpt"], tmp_path, torch.rand(2, 1, 150, 174))


def preprocessing() -> Compose:
    """The bundle's deterministic training preprocessing, as the config builds it."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    return Compose(parser.get_parsed_content("preprocessing"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("label_values", "outside the classes 0..3"),
        ("label_shape", "spatial shape"),
        ("image_2d", "expected 3"),
        ("two_channels", "expected 1"),
    ],
)
def test_bad_training_pairs_are_rejected_naming_the_file(tmp_path, case, message):
    image, label, affine = synthetic.generate_subject(3, size=64)["ED"]
    if case == "label_values":
        label = label.copy()
        label[0, 0, 0] = 5
    elif case == "label_shape":
        label = label[:, :-2]
    elif case == "image_2d":
        image = image[..., 0]
    elif case == "two_channels":
        image = np.stack([image, image], axis=-1)  # X, Y, Z, T: a cine sequence given instead of one frame
    write_stack(tmp_path / "img.nii.gz", image, affine)
    write_stack(tmp_path / "lab.nii.gz", label, affine)
    with pytest.raises(Exception) as err:
        preprocessing()({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    text = str(err.value.__cause__ or err.value)
    culprit = "img.nii.gz" if case in ("image_2d", "two_channels") else "lab.nii.gz"
    assert culprit in text and message in text, text


def test_multi_gpu_config_trains_one_epoch_with_torchrun_gloo(dataset, tmp_path):
    assert_torchrun_trains_one_epoch(BUNDLE, dataset, tmp_path, port=29534)
