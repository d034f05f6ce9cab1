"""The liver CT bundle end to end: metadata, training, evaluation with lesion detection, inference from NIfTI
(RAS and LPS) and DICOM series, measurements, errors, resume, export, torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from common.dicom import write_dicom_series
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

BUNDLE = ROOT / "bundles" / "liver_ct_unet3d"
synthetic = load_module(BUNDLE / "scripts" / "synthetic.py", "liver_synthetic_for_bundle_tests")
EPOCHS = 12
#: a coarse, CPU-sized space for the tests: 64-pixel phantoms (about 5 mm pixels) at 4 x 4 x 6 mm, 48x48x32 windows
SMALL = {"target_spacing": "[4.0,4.0,6.0]", "roi_size": "[48,48,32]", "num_workers": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training cases (4 train + 1 held out) and 1 test case, 64 x 64 pixels, RAS and LPS grids alternating."""
    root = tmp_path_factory.mktemp("liver_data")
    synthetic.write_dataset(str(root), num_train=5, num_test=1, size=64, seed=7)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """Train the bundle briefly through the CLI; return paths and the training log."""
    work = tmp_path_factory.mktemp("liver_run")
    return train_bundle(BUNDLE, dataset, work, max_epochs=EPOCHS, val_interval=4, learning_rate=0.003, **SMALL)


def run_inference(inputs: Path, outputs: Path, ckpt: Path) -> str:
    """Segment a folder with inference.json at the test's coarse spacing."""
    return check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "inference.json"),
            bundle_root=BUNDLE,
            input_dir=inputs,
            output_dir=outputs,
            ckpt_path=ckpt,
            **SMALL,
        )
    )


def test_metadata_verifies_offline_and_network_matches_it():
    assert_bundle_verifies(BUNDLE, "train.json", n=2)


def test_training_lowers_loss_and_beats_chance(trained):
    losses = epoch_losses(trained["log"])
    assert len(losses) == EPOCHS
    first, last = np.mean(losses[1]), np.mean(losses[EPOCHS])
    assert last < 0.7 * first, f"loss went from {first:.3f} to {last:.3f}"
    assert trained["ckpt"].is_file(), "no best checkpoint written"
    assert list((trained["work"] / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_evaluation_scores_liver_and_tumours_in_the_native_grid(trained, dataset, tmp_path):
    check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "train.json", "evaluate.json"),
            bundle_root=BUNDLE,
            dataset_dir=dataset,
            ckpt_path=trained["ckpt"],
            output_dir=tmp_path,
            **SMALL,
        )
    )
    (row,) = read_csv(tmp_path / "metrics.csv")
    known = json.loads((dataset / "dataset.json").read_text())["test"][0]
    assert row["case"] == "liver_005"
    # chance: a map with the class frequencies but no spatial information has a liver Dice equal to the liver's
    # share of the volume (about 5 % here); a short training run must be far above it
    assert float(row["dice_liver"]) > 0.5, row
    assert 0 < float(row["hd95_liver_mm"]) < 80
    # the ground-truth measurements come from the label in its own grid: they equal the phantom's known values
    assert float(row["true_liver_ml"]) == pytest.approx(known["liver_ml"] + known["tumour_ml"], abs=0.01)
    assert int(row["true_tumours"]) == int(row["true_tumour_count"]) == known["tumour_count"]
    assert float(row["true_tumour_ml"]) == pytest.approx(known["tumour_ml"], abs=0.01)
    for key in ("tumour_sensitivity", "false_positive_tumours", "detected_tumours", "pred_tumour_burden_percent"):
        assert key in row


def test_inference_reads_nifti_of_both_orientations_and_dicom_keeps_the_grid(trained, dataset, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    index = json.loads((dataset / "dataset.json").read_text())
    ras, lps = index["training"][0], index["training"][1]  # written RAS- and LPS-ordered
    assert (ras["orientation"], lps["orientation"]) == ("RAS", "LPS")
    for entry in (ras, lps):
        (inputs / Path(entry["image"]).name).write_bytes((dataset / entry["image"]).read_bytes())
    # the LPS case again, as a DICOM series folder, and the RAS case as NRRD (ITK writes it in LPS space)
    lps_nifti = nib.load(dataset / lps["image"])
    write_dicom_series(np.asarray(lps_nifti.dataobj), lps_nifti.affine, inputs / "series_lps")
    itk.imwrite(itk.imread(str(dataset / ras["image"])), str(inputs / "ras_copy.nrrd"))
    # bad inputs: an MR-like intensity range, a 2D image, an unreadable file
    mr = np.random.default_rng(0).uniform(0, 900, (40, 40, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(mr, np.eye(4)), inputs / "mr.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lps_nifti.dataobj)[..., 0], lps_nifti.affine), inputs / "flat.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = run_inference(inputs, outputs, trained["ckpt"])
    written = sorted(p.name for p in outputs.glob("*_seg.nii.gz"))
    assert written == ["liver_000_seg.nii.gz", "liver_001_seg.nii.gz", "ras_copy_seg.nii.gz", "series_lps_seg.nii.gz"]
    for name, source in (("liver_000", ras), ("liver_001", lps)):
        image, seg = nib.load(dataset / source["image"]), nib.load(outputs / f"{name}_seg.nii.gz")
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    # the DICOM series is the LPS volume: in world (RAS) orientation, the two segmentations agree
    from_nifti = np.asarray(nib.as_closest_canonical(nib.load(outputs / "liver_001_seg.nii.gz")).dataobj)
    dicom_seg = nib.as_closest_canonical(nib.load(outputs / "series_lps_seg.nii.gz"))
    np.testing.assert_allclose(dicom_seg.affine, nib.as_closest_canonical(lps_nifti).affine, atol=1e-3)
    assert (np.asarray(dicom_seg.dataobj) == from_nifti).mean() > 0.999
    # the NRRD copy of the RAS case: the same grid in world space, the same segmentation
    from_nrrd = nib.load(outputs / "ras_copy_seg.nii.gz")
    np.testing.assert_allclose(from_nrrd.affine, nib.load(dataset / ras["image"]).affine, atol=1e-3)
    ras_seg = np.asarray(nib.load(outputs / "liver_000_seg.nii.gz").dataobj)
    assert (np.asarray(from_nrrd.dataobj) == ras_seg).mean() > 0.999
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {"mr.nii.gz", "flat.nii.gz", "broken.nii.gz"}
    assert "not CT in Hounsfield units" in failures["mr.nii.gz"] and "mr.nii.gz" in failures["mr.nii.gz"]
    assert "expected 3" in failures["flat.nii.gz"]
    assert "skipped" in out
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # measurements: per case JSON with the tumour list, one CSV row per case, one CSV row per tumour
    rows = {r["case"]: r for r in read_csv(outputs / "measurements.csv")}
    assert set(rows) == {"liver_000", "liver_001", "ras_copy", "series_lps"}
    for case, row in rows.items():
        seg = nib.load(outputs / f"{case}_seg.nii.gz")
        voxel_ml = abs(np.linalg.det(seg.affine[:3, :3])) / 1000
        values = np.asarray(seg.dataobj)
        assert float(row["liver_ml"]) == pytest.approx((values >= 1).sum() * voxel_ml, rel=1e-6)
        detail = json.loads((outputs / f"{case}_measurements.json").read_text())
        assert len(detail["tumours"]) == int(row["tumour_count"])
    tumour_rows = read_csv(outputs / "tumours.csv") if (outputs / "tumours.csv").exists() else []
    assert len(tumour_rows) == sum(int(r["tumour_count"]) for r in rows.values())


def test_training_resumes_from_last_checkpoint(trained, dataset):
    assert_resumes_one_epoch(BUNDLE, trained, dataset, EPOCHS, val_interval=4, **SMALL)


def test_ckpt_export_torchscript_matches(trained, tmp_path):
    assert_torchscript_matches(BUNDLE, trained["ckpt"], tmp_path, torch.rand(1, 1, 48, 48, 32))


def preprocessing() -> Compose:
    """The bundle's deterministic training preprocessing, as the config builds it."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    return Compose(parser.get_parsed_content("preprocessing"))


@pytest.mark.parametrize(
    "case, culprit, message",
    [
        ("label_values", "lab.nii.gz", "outside the classes 0..2"),
        ("label_shape", "lab.nii.gz", "spatial shape"),
        ("image_2d", "img.nii.gz", "expected 3"),
        ("not_hu", "img.nii.gz", "not CT in Hounsfield units"),
        ("nan", "img.nii.gz", "NaN"),
    ],
)
def test_bad_training_pairs_are_rejected_naming_the_file(tmp_path, case, culprit, message):
    image, label, affine = synthetic.generate_case(3, size=48)
    image = image.astype(np.float32)
    if case == "label_values":
        label = label.copy()
        label[0, 0, 0] = 4
    elif case == "label_shape":
        label = label[:, :-2]
    elif case == "image_2d":
        image = image[..., 0]
    elif case == "not_hu":
        image = (image + 1024) / 4096  # already scaled to 0..1
    elif case == "nan":
        image[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    with pytest.raises(Exception) as err:
        preprocessing()({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    text = str(err.value.__cause__ or err.value)
    assert culprit in text and message in text, text


def test_multi_gpu_config_trains_one_epoch_with_torchrun_gloo(dataset, tmp_path):
    index = json.loads((dataset / "dataset.json").read_text())
    absolute = [
        {**e, "image": str(dataset / e["image"]), "label": str(dataset / e["label"])} for e in index["training"]
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": absolute[:3], "validation": absolute[3:]}))
    assert_torchrun_trains_one_epoch(BUNDLE, tmp_path, tmp_path, port=29538, **SMALL)
