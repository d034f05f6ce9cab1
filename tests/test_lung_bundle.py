"""The lung nodule CT bundle end to end: metadata, training, evaluation with lesion-wise detection, inference from
NIfTI (RAS and LPS) and DICOM series, the nodule table, errors, resume, export, torchrun; and the nodule
measurements on hand-computed cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy import ndimage

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

BUNDLE = ROOT / "bundles" / "lung_nodule_fcn3d"
synthetic = load_module(BUNDLE / "scripts" / "synthetic.py", "lung_synthetic_for_bundle_tests")
measures = load_module(BUNDLE / "scripts" / "measures.py", "lung_measures_for_bundle_tests")
EPOCHS = 12
#: a coarse, CPU-sized space for the tests: 64-pixel phantoms (about 5 mm pixels) at 4 mm, 32-voxel windows
SMALL = {"target_spacing": "[4.0,4.0,4.0]", "roi_size": "[32,32,32]", "num_workers": 0}
#: nodules large enough to be seen at 4 mm, none against the pleura (harder to learn in a dozen epochs)
NODULE_MM = (12.0, 30.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training cases (4 train + 1 held out) and 1 test case, 64 x 64 pixels, RAS and LPS grids alternating."""
    root = tmp_path_factory.mktemp("lung_data")
    synthetic.write_dataset(
        str(root), num_train=5, num_test=1, size=64, seed=7, nodule_diameter=NODULE_MM, pleural_share=0.0
    )
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """Train the bundle briefly through the CLI; return paths and the training log."""
    work = tmp_path_factory.mktemp("lung_run")
    return train_bundle(BUNDLE, dataset, work, max_epochs=EPOCHS, val_interval=6, learning_rate=0.003, **SMALL)


def run_inference(inputs: Path, outputs: Path, ckpt: Path, **overrides) -> str:
    """Segment a folder with inference.json at the test's coarse spacing."""
    return check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "inference.json"),
            bundle_root=BUNDLE,
            input_dir=inputs,
            output_dir=outputs,
            ckpt_path=ckpt,
            **{**SMALL, **overrides},
        )
    )


def test_metadata_verifies_offline_and_network_matches_it():
    assert_bundle_verifies(BUNDLE, "train.json", n=2)


def test_configs_agree_and_the_network_is_a_3d_fcn():
    parsers = {}
    for name in ("train.json", "inference.json"):
        parsers[name] = ConfigParser()
        parsers[name].read_config(BUNDLE / "configs" / name)
    for key in ("network_def", "target_spacing", "hu_window", "roi_size", "min_nodule_mm3", "num_classes"):
        assert parsers["train.json"].get(key) == parsers["inference.json"].get(key), key
    net = parsers["train.json"].get_parsed_content("network_def")
    assert type(net).__name__ == "FCN" and net.spatial_dims == 3
    assert parsers["train.json"].get("hu_window") == [-1000, 400]


def test_training_lowers_loss_and_beats_chance(trained):
    losses = epoch_losses(trained["log"])
    assert len(losses) == EPOCHS
    first, last = np.mean(losses[1]), np.mean(losses[EPOCHS])
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"
    assert trained["ckpt"].is_file(), "no best checkpoint written"
    assert list((trained["work"] / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_evaluation_scores_voxels_and_lesions_in_the_native_grid(trained, dataset, tmp_path):
    check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "train.json", "evaluate.json"),
            bundle_root=BUNDLE,
            dataset_dir=dataset,
            ckpt_path=trained["ckpt"],
            output_dir=tmp_path,
            save_predictions=True,
            **SMALL,
        )
    )
    (row,) = read_csv(tmp_path / "metrics.csv")
    known = json.loads((dataset / "dataset.json").read_text())["test"][0]
    assert row["case"] == "lung_005"
    for key in ("dice", "sensitivity", "sensitivity_5mm", "false_positives", "lesion_dice", "detected_nodules"):
        assert key in row, key
    # chance: a map with the nodule frequency but no spatial information has a Dice equal to the nodules' share of
    # the volume (well under 1 % here); a short training run must be far above it
    assert float(row["dice"]) > 0.2, row
    assert int(row["true_nodules"]) == known["nodule_count"]
    assert int(row["true_nodules_5mm"]) == sum(n["diameter_mm"] >= 5 for n in known["nodules"])
    assert float(row["true_volume_mm3"]) == pytest.approx(sum(n["volume_mm3"] for n in known["nodules"]), rel=1e-4)
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert summary["cases"] == 1 and "sensitivity_5mm" in summary
    seg = nib.load(tmp_path / "predictions" / "lung_005_seg.nii.gz")
    image = nib.load(dataset / known["image"])
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine, atol=1e-4)


def test_inference_keeps_the_grid_reports_bad_files_and_tables_nodules(trained, dataset, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    index = json.loads((dataset / "dataset.json").read_text())
    ras, lps = index["training"][4], index["test"][0]  # the test case: the evaluation above finds its nodules
    assert (ras["orientation"], lps["orientation"]) == ("RAS", "LPS")
    for entry in (ras, lps):
        (inputs / Path(entry["image"]).name).write_bytes((dataset / entry["image"]).read_bytes())
    lps_nifti = nib.load(dataset / lps["image"])
    write_dicom_series(np.asarray(lps_nifti.dataobj), lps_nifti.affine, inputs / "series_lps")
    mr = np.random.default_rng(0).uniform(0, 900, (40, 40, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(mr, np.eye(4)), inputs / "mr.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lps_nifti.dataobj)[..., 0], lps_nifti.affine), inputs / "flat.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = run_inference(inputs, outputs, trained["ckpt"])
    written = sorted(p.name for p in outputs.glob("*_seg.nii.gz"))
    assert written == ["lung_004_seg.nii.gz", "lung_005_seg.nii.gz", "series_lps_seg.nii.gz"]
    for name, source in (("lung_004", ras), ("lung_005", lps)):
        image, seg = nib.load(dataset / source["image"]), nib.load(outputs / f"{name}_seg.nii.gz")
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    from_nifti = np.asarray(nib.as_closest_canonical(nib.load(outputs / "lung_005_seg.nii.gz")).dataobj)
    dicom_seg = nib.as_closest_canonical(nib.load(outputs / "series_lps_seg.nii.gz"))
    np.testing.assert_allclose(dicom_seg.affine, nib.as_closest_canonical(lps_nifti).affine, atol=1e-3)
    assert (np.asarray(dicom_seg.dataobj) == from_nifti).mean() > 0.999
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {"mr.nii.gz", "flat.nii.gz", "broken.nii.gz"}
    assert "not CT in Hounsfield units" in failures["mr.nii.gz"] and "mr.nii.gz" in failures["mr.nii.gz"]
    assert "expected 3" in failures["flat.nii.gz"]
    assert "skipped" in out
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # the tables: one row per case, one JSON per case, one row per nodule, recomputed here from the written files
    rows = {r["case"]: r for r in read_csv(outputs / "measurements.csv")}
    assert set(rows) == {"lung_004", "lung_005", "series_lps"}
    nodule_rows = read_csv(outputs / "nodules.csv") if (outputs / "nodules.csv").exists() else []
    assert len(nodule_rows) == sum(int(r["nodule_count"]) for r in rows.values())
    assert int(rows["lung_005"]["nodule_count"]) > 0, "the trained model finds the test case's nodules"
    for case, source in (("lung_004", ras), ("lung_005", lps)):
        seg = nib.load(outputs / f"{case}_seg.nii.gz")
        values, hu = np.asarray(seg.dataobj) == 1, np.asarray(nib.load(dataset / source["image"]).dataobj)
        voxel_mm3 = abs(np.linalg.det(seg.affine[:3, :3]))
        components, count = ndimage.label(values, np.ones((3, 3, 3), bool))
        detail = json.loads((outputs / f"{case}_measurements.json").read_text())
        assert detail["nodule_count"] == count == len(detail["nodules"])
        sizes = sorted((np.bincount(components.ravel())[1:] * voxel_mm3).tolist(), reverse=True)
        assert [n["volume_mm3"] for n in detail["nodules"]] == pytest.approx(sizes, abs=0.01)
        assert all(s >= 10.0 for s in sizes), "components under min_nodule_mm3 are dropped from the segmentation"
        by_size = sorted(range(1, count + 1), key=lambda c: -(components == c).sum())
        for nodule, component in zip(detail["nodules"], by_size):
            inside = components == component
            centroid = seg.affine[:3, :3] @ np.argwhere(inside).mean(axis=0) + seg.affine[:3, 3]
            got = [nodule["centroid_x_mm"], nodule["centroid_y_mm"], nodule["centroid_z_mm"]]
            np.testing.assert_allclose(got, centroid, atol=0.01)
            assert nodule["mean_hu"] == pytest.approx(hu[inside].mean(), abs=0.06)
            assert 0.5 <= nodule["mean_probability"] <= nodule["max_probability"] <= 1.0
            assert nodule["longest_axial_diameter_mm"] >= 0 and nodule["equivalent_diameter_mm"] > 0
    # a larger min_nodule_mm3 removes every component from the written segmentation and the tables
    big = tmp_path / "big"
    big_in = tmp_path / "big_in"
    big_in.mkdir()
    (big_in / "lung_005.nii.gz").write_bytes((inputs / "lung_005.nii.gz").read_bytes())
    run_inference(big_in, big, trained["ckpt"], min_nodule_mm3=1e9)
    assert not np.asarray(nib.load(big / "lung_005_seg.nii.gz").dataobj).any()
    assert json.loads((big / "lung_005_measurements.json").read_text())["nodule_count"] == 0


def test_training_resumes_from_last_checkpoint(trained, dataset):
    assert_resumes_one_epoch(BUNDLE, trained, dataset, EPOCHS, val_interval=6, **SMALL)


def test_ckpt_export_torchscript_matches(trained, tmp_path):
    assert_torchscript_matches(BUNDLE, trained["ckpt"], tmp_path, torch.rand(1, 1, 32, 32, 24))


def preprocessing() -> Compose:
    """The bundle's deterministic training preprocessing, as the config builds it."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    return Compose(parser.get_parsed_content("preprocessing"))


@pytest.mark.parametrize(
    "case, culprit, message",
    [
        ("label_values", "lab.nii.gz", "outside the classes 0..1"),
        ("label_shape", "lab.nii.gz", "spatial shape"),
        ("image_2d", "img.nii.gz", "expected 3"),
        ("not_hu", "img.nii.gz", "not CT in Hounsfield units"),
        ("nan", "img.nii.gz", "NaN"),
    ],
)
def test_bad_training_pairs_are_rejected_naming_the_file(tmp_path, case, culprit, message):
    image, label, affine = synthetic.generate_case(3, size=40, num_slices=30)
    image = image.astype(np.float32)
    if case == "label_values":
        label = label.copy()
        label[0, 0, 0] = 2
    elif case == "label_shape":
        label = label[:, :-2]
    elif case == "image_2d":
        image = image[..., 0]
    elif case == "not_hu":
        image = (image + 1024) / 4096
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
    assert_torchrun_trains_one_epoch(BUNDLE, tmp_path, tmp_path, port=29541, **SMALL)


# --- nodule measurements on hand-computed cases ---


def _meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """A channel-first MetaTensor with an affine."""
    return MetaTensor(torch.as_tensor(array[None]), affine=torch.as_tensor(affine))


def test_nodule_table_on_hand_computed_nodules():
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])  # LPS-ordered, 0.5 mm pixels, 2 mm slices
    affine[:3, 3] = [10.0, 20.0, -30.0]
    label = np.zeros((20, 20, 6), np.uint8)
    label[2:6, 3:5, 1:3] = 1  # 4 x 2 x 2 = 16 voxels of 0.5 mm3: 8 mm3
    label[12, 12, 4] = 1  # a single voxel: 0.5 mm3
    hu = np.full(label.shape, -850.0)
    hu[2:6, 3:5, 1:3] = 40.0
    hu[2, 3, 1] = 20.0
    prob = np.where(label == 1, 0.9, 0.1)
    prob[5, 4, 2] = 0.7
    rows = measures.nodule_table(label, affine, image=hu, prob=prob)
    assert [r["nodule"] for r in rows] == [1, 2]
    first = rows[0]
    assert first["volume_mm3"] == 8.0
    # centroid voxel (3.5, 3.5, 1.5): x = 10 - 0.5 * 3.5, y = 20 - 0.5 * 3.5, z = -30 + 2 * 1.5
    assert (first["centroid_x_mm"], first["centroid_y_mm"], first["centroid_z_mm"]) == (8.25, 18.25, -27.0)
    assert first["equivalent_diameter_mm"] == pytest.approx((6 * 8 / math.pi) ** (1 / 3), abs=0.01)
    # in one axial slice: voxel centres 3 apart along x (1.5 mm) and 1 along y (0.5 mm)
    assert first["longest_axial_diameter_mm"] == pytest.approx(math.hypot(1.5, 0.5), abs=0.01)
    assert first["mean_hu"] == pytest.approx((15 * 40 + 20) / 16, abs=0.05)
    assert first["mean_probability"] == pytest.approx((15 * 0.9 + 0.7) / 16, abs=1e-4)
    assert first["max_probability"] == pytest.approx(0.9)
    assert rows[1]["volume_mm3"] == 0.5 and rows[1]["longest_axial_diameter_mm"] == 0.0
    assert measures.nodule_table(label, affine, min_nodule_mm3=1.0)[0]["volume_mm3"] == 8.0
    assert len(measures.nodule_table(label, affine, min_nodule_mm3=1.0)) == 1


def test_small_components_are_removed_by_volume_in_mm3():
    affine = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm3 voxels
    label = np.zeros((12, 12, 8), np.float32)
    label[1:3, 1:3, 1] = 1  # 4 voxels: 40 mm3
    label[8, 8, 5] = label[9, 9, 6] = 1  # diagonal neighbours, one component (26-connectivity): 20 mm3
    label[5, 10, 2] = 1  # 10 mm3
    kept = measures.RemoveSmallNodulesd("pred", min_volume_mm3=15.0)({"pred": _meta(label, affine)})["pred"]
    expected = label.copy()
    expected[5, 10, 2] = 0
    np.testing.assert_array_equal(np.asarray(kept[0]), expected)
    assert isinstance(kept, MetaTensor) and np.allclose(np.asarray(kept.affine), affine)
    kept = measures.RemoveSmallNodulesd("pred", min_volume_mm3=25.0)({"pred": _meta(label, affine)})["pred"]
    assert int(kept.sum()) == 4


def test_case_scores_on_a_hand_computed_case():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[2:8, 2:8, 2:8] = 1  # 216 mm3, equivalent diameter 7.4 mm: found
    truth[20:22, 20:22, 20:22] = 1  # 8 mm3, 2.5 mm: missed
    truth[12:18, 2:8, 20:26] = 1  # 216 mm3: missed
    pred = np.zeros_like(truth)
    pred[2:8, 2:8, 4:10] = 1  # overlaps the first: 144 voxels in common of 216 + 216
    pred[25:27, 25:27, 2:4] = 1  # a false positive
    row = measures.case_scores({"pred": _meta(pred, affine), "native_label": _meta(truth, affine)})
    assert row["dice"] == pytest.approx(2 * 144 / (440 + 224))
    assert (row["true_nodules"], row["pred_nodules"], row["detected_nodules"]) == (3, 2, 1)
    assert row["sensitivity"] == pytest.approx(1 / 3) and row["false_positives"] == 1
    assert row["lesion_dice"] == pytest.approx((2 * 144 / 432 + 0 + 0) / 3)
    assert (row["true_nodules_5mm"], row["detected_nodules_5mm"]) == (2, 1) and row["sensitivity_5mm"] == 0.5
    assert row["true_volume_mm3"] == 440 and row["pred_volume_mm3"] == 224
    empty = measures.case_scores({"pred": _meta(0 * pred, affine), "native_label": _meta(0 * truth, affine)})
    assert math.isnan(empty["dice"]) and math.isnan(empty["sensitivity_5mm"]) and empty["false_positives"] == 0
