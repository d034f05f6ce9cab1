"""The liver CT bundle's own behaviour (the contract every bundle keeps is in test_bundle_contract.py, CT inputs in
test_ct_inputs.py): liver and tumour scores against the phantoms' known truth, tumour measurements per case."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import QuickRun, read_csv

NAME = "liver_ct_unet3d"


@pytest.fixture(scope="module")
def run(quick_run) -> QuickRun:
    """The bundle's quick demo run: data, weights, evaluation (``out/eval``) and inference (``out/inference``)."""
    return quick_run(NAME)


def test_evaluation_scores_liver_and_tumours_in_the_native_grid(run):
    (row,) = read_csv(run.out / "eval" / "metrics.csv")
    known = run.index["test"][0]
    assert row["case"] == known["subject"]
    assert 0 < float(row["hd95_liver_mm"]) < 80
    # the ground-truth measurements come from the label in its own grid: they equal the phantom's known values
    assert float(row["true_liver_ml"]) == pytest.approx(known["liver_ml"] + known["tumour_ml"], abs=0.01)
    assert int(row["true_tumours"]) == int(row["true_tumour_count"]) == known["tumour_count"]
    assert float(row["true_tumour_ml"]) == pytest.approx(known["tumour_ml"], abs=0.01)
    for key in ("tumour_sensitivity", "false_positive_tumours", "detected_tumours", "pred_tumour_burden_percent"):
        assert key in row


def test_inference_measures_liver_volume_and_each_tumour(run):
    outputs = run.out / "inference"
    rows = {r["case"]: r for r in read_csv(outputs / "measurements.csv")}
    assert set(rows) == {e["subject"] for e in run.index["test"]}
    for case, row in rows.items():
        seg = nib.load(outputs / f"{case}_seg.nii.gz")
        voxel_ml = abs(np.linalg.det(seg.affine[:3, :3])) / 1000
        values = np.asarray(seg.dataobj)
        assert float(row["liver_ml"]) == pytest.approx((values >= 1).sum() * voxel_ml, rel=1e-6)
        detail = json.loads((outputs / f"{case}_measurements.json").read_text())
        assert len(detail["tumours"]) == int(row["tumour_count"])
    tumour_rows = read_csv(outputs / "tumours.csv") if (outputs / "tumours.csv").exists() else []
    assert len(tumour_rows) == sum(int(r["tumour_count"]) for r in rows.values())


def test_validation_scores_the_segmentation_inference_writes():
    """The best model is chosen on what inference writes: validation keeps the largest liver component and turns
    tumours under ``min_tumour_mm3`` into liver, as ``inference_postprocessing`` does."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    from conftest import ROOT

    parser = ConfigParser()
    parser.read_config(ROOT / "bundles" / NAME / "configs" / "train.json")
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    logits = torch.zeros(3, 40, 40, 20)
    logits[0] = 1.0
    logits[1, 5:30, 5:30, 2:18] = 2.0  # the liver
    logits[1, 34:38, 34:38, 2:6] = 2.0  # a separate small "liver" component
    logits[2, 10:15, 10:15, 5:10] = 3.0  # a tumour of 125 mm3
    logits[2, 20, 20, 12] = 3.0  # a 1 mm3 speck
    pred = postprocessing({"pred": MetaTensor(logits, affine=torch.eye(4))})["pred"][0].numpy()
    assert parser.get_parsed_content("min_tumour_mm3") > 1.0
    assert pred[34:38, 34:38, 2:6].max() == 0
    assert pred[20, 20, 12] == 1 and (pred[10:15, 10:15, 5:10] == 2).all()
    assert (pred == 2).sum() == 125
