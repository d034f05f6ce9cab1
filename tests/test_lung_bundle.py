"""The lung nodule CT bundle's own behaviour (the contract every bundle keeps is in test_bundle_contract.py, CT
inputs in test_ct_inputs.py): configs that agree, lesion-wise evaluation against the phantoms' nodules, the nodule
table recomputed from the written files, the minimum nodule size; and the nodule measurements on hand-computed
cases."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scipy import ndimage

from common.profile import bundle_scripts
from conftest import ROOT, QuickRun, load_module, read_csv
from synthetic.lung import build_phantom

BUNDLE = ROOT / "bundles" / "lung_nodule_fcn3d"
measures = load_module(BUNDLE / "scripts" / "measures.py", "lung_measures_for_bundle_tests")
lungs_module = load_module(BUNDLE / "scripts" / "lungs.py", "lung_fields_for_bundle_tests")


@pytest.fixture(scope="module")
def run(quick_run) -> QuickRun:
    """The bundle's quick demo run: data, weights, evaluation (``out/eval``) and inference (``out/inference``)."""
    return quick_run(BUNDLE.name)


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


def test_evaluation_scores_voxels_and_lesions_in_the_native_grid(run):
    (row,) = read_csv(run.out / "eval" / "metrics.csv")
    known = run.index["test"][0]
    assert row["case"] == known["subject"]
    for key in ("dice", "sensitivity", "sensitivity_5mm", "false_positives", "lesion_dice", "detected_nodules"):
        assert key in row, key
    assert int(row["true_nodules"]) == known["nodule_count"]
    assert int(row["true_nodules_5mm"]) == sum(n["diameter_mm"] >= 5 for n in known["nodules"])
    assert float(row["true_volume_mm3"]) == pytest.approx(sum(n["volume_mm3"] for n in known["nodules"]), rel=1e-4)
    summary = json.loads((run.out / "eval" / "metrics_summary.json").read_text())
    assert summary["cases"] == 1 and "sensitivity_5mm" in summary


def test_nodule_table_matches_the_written_segmentation(run, tmp_path):
    outputs = run.out / "inference"
    rows = {r["case"]: r for r in read_csv(outputs / "measurements.csv")}
    (case,) = rows
    nodule_rows = read_csv(outputs / "nodules.csv") if (outputs / "nodules.csv").exists() else []
    assert len(nodule_rows) == sum(int(r["nodule_count"]) for r in rows.values())
    assert int(rows[case]["nodule_count"]) > 0, "the trained model finds the test case's nodules"
    seg = nib.load(outputs / f"{case}_seg.nii.gz")
    values, hu = np.asarray(seg.dataobj) == 1, np.asarray(nib.load(run.out / "test_images" / f"{case}.nii.gz").dataobj)
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
    run.segment(run.out / "test_images", tmp_path, min_nodule_mm3=1e9)
    assert not np.asarray(nib.load(tmp_path / f"{case}_seg.nii.gz").dataobj).any()
    assert json.loads((tmp_path / f"{case}_measurements.json").read_text())["nodule_count"] == 0


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


def test_nodules_outside_the_lung_fields_are_removed():
    phantom = build_phantom(seed=4, size=96, orientation="RAS", pleural_share=0.5)
    window = (-1000.0, 400.0)
    scaled = np.clip((phantom.image.astype(np.float32) - window[0]) / (window[1] - window[0]), 0, 1)
    image = _meta(scaled, phantom.affine)
    lungs = lungs_module.LungFieldsd(hu_window=window, margin_mm=10.0)({"image": image})["lungs"]
    assert isinstance(lungs, MetaTensor) and np.allclose(np.asarray(lungs.affine), phantom.affine)
    inside = np.asarray(lungs[0]) > 0.5
    assert (inside & phantom.lung).sum() >= 0.99 * phantom.lung.sum()  # the fields cover the aerated lungs
    assert not inside[0].any() and not inside[:, :3].any()  # ... and not the air around the body
    truth = phantom.label == 1
    labels, count = ndimage.label(truth)
    grown = lungs_module.grow(inside, np.asarray(lungs.pixdim)[:3], lungs.meta["margin_mm"])
    assert count >= 1 and all(grown[labels == n].any() for n in range(1, count + 1))  # pleural ones included
    fake = truth.copy()
    centre = np.array(phantom.image.shape) // 2
    spine = np.argwhere(phantom.image > 150)  # bone: the spine and the ribs, outside the lungs
    spine = spine[np.linalg.norm(spine[:, :2] - centre[:2], axis=1).argmin()]
    fake[tuple(spine)] = True
    fake[2:5, 2:5, 2:5] = True  # outside the body
    pred = _meta(fake.astype(np.float32), phantom.affine)
    kept = lungs_module.KeepInsideLungsd("pred")({"pred": pred, "lungs": lungs})
    assert "lungs" not in kept
    np.testing.assert_array_equal(np.asarray(kept["pred"][0]) > 0.5, truth)
    # the prediction in another grid of the same world (LPS-ordered, as DICOM-derived NIfTIs are): the same answer
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(fake.shape[:2]) - 1
    lps = _meta(np.ascontiguousarray(fake[::-1, ::-1]).astype(np.float32), phantom.affine @ flip)
    kept_lps = lungs_module.KeepInsideLungsd("pred")({"pred": lps, "lungs": lungs})["pred"]
    np.testing.assert_array_equal(np.asarray(kept_lps[0])[::-1, ::-1] > 0.5, truth)


@pytest.mark.parametrize("margin_mm", [0.0, 3.0, 10.0])
def test_nodule_check_near_the_fields_equals_the_fields_grown_everywhere(margin_mm):
    """``near`` looks only at a box around the nodule; the answer is that of the whole grid's grown fields."""
    rng = np.random.default_rng(3)
    fields = ndimage.binary_dilation(rng.random((40, 36, 30)) > 0.995, iterations=2)
    spacing = (0.8, 1.1, 2.5)
    grown = lungs_module.grow(fields, spacing, margin_mm)
    for _ in range(60):
        corner = rng.integers(0, [36, 32, 27])
        index = corner + rng.integers(0, 4, size=(rng.integers(1, 6), 3))
        assert lungs_module.near(fields, index, spacing, margin_mm) == bool(grown[tuple(index.T)].any())


def test_without_lung_fields_every_nodule_is_kept(caplog):
    pred = _meta(np.pad(np.ones((3, 3, 3), np.float32), 4), np.eye(4))
    empty = _meta(np.zeros_like(np.asarray(pred[0])), np.eye(4))
    kept = lungs_module.KeepInsideLungsd("pred")({"pred": pred, "lungs": empty})["pred"]
    assert int(kept.sum()) == 27 and "no lung fields found" in caplog.text


def test_validation_scores_the_segmentation_inference_writes():
    """The best model is chosen on what inference writes: validation drops nodules under ``min_nodule_mm3`` and
    those outside the lung fields, as ``inference_postprocessing`` does."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    with bundle_scripts(BUNDLE):
        postprocessing = parser.get_parsed_content("validate#postprocessing")
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))  # 8 mm3 voxels
    image = torch.zeros(1, 50, 50, 30)  # air around the body, windowed HU (-1000 -> 0)
    image[0, 5:45, 5:45] = 0.5  # soft tissue, -300 HU
    image[0, 10:25, 10:25, 8:23] = 0.1  # a lung of 27 mL, -860 HU
    logits = torch.zeros(2, 50, 50, 30)
    logits[0] = 1.0
    logits[1, 15:17, 15:17, 12:14] = 2.0  # a nodule of 64 mm3 in the lung
    logits[1, 20, 20, 18] = 2.0  # 8 mm3, under the minimum
    logits[1, 36:39, 36:39, 10:13] = 2.0  # 216 mm3 in the chest wall, 22 mm from the lung
    data = {"image": MetaTensor(image, affine=affine), "pred": MetaTensor(logits, affine=affine)}
    pred = postprocessing(data)["pred"][0].numpy()
    assert parser.get_parsed_content("min_nodule_mm3") > 8.0
    assert pred.sum() == 8 and pred[15:17, 15:17, 12:14].all()
