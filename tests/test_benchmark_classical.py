"""Classical baselines: each method on hand-made images whose answer is known, the windows tuned from training
labels, the bundles' Dice conventions, the task -> bundle mapping read from the bundles' profiles, and the
benchmark's quick run (every output, one row per task x method x class including the network, Dice in [0, 1])."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.profile import bundle_names, describe
from conftest import ROOT, load_module, quick_benchmark, read_csv

SCRIPT = ROOT / "benchmarks" / "classical.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
cm = load_module(ROOT / "benchmarks" / "classical_methods.py", "classical_methods")
bench = load_module(SCRIPT, "benchmark_classical")
OUTPUTS = ["results.csv", "per_case.csv", "results.md", "dice.png"]
SPACING = (2.0, 2.0, 2.0)


def blob_case(seed: int, organ_hu: float = 110.0, centre=(20, 20, 10), radius_mm: float = 22.0) -> cm.Case:
    """A bright ellipsoid 'liver' (``organ_hu``) in fat (-100 HU) with 12 HU noise, 2 mm voxels, label 1 inside."""
    rng = np.random.default_rng(seed)
    grid = np.indices((40, 40, 20)).astype(float)
    dist = np.sqrt(sum(((g - c) * 2.0) ** 2 for g, c in zip(grid, centre)))
    label = (dist <= radius_mm).astype(np.int16)
    image = np.where(label == 1, organ_hu, -100.0) + rng.normal(0, 12, label.shape)
    return cm.Case(f"blob{seed}", image[None].astype(np.float32), label, SPACING)


@pytest.fixture(scope="module")
def tuned() -> cm.Params:
    """Parameters tuned on three training blobs."""
    return cm.tune("liver", [blob_case(s, centre=(20 + s, 19, 10)) for s in range(3)], max_search_cases=3)


def test_windows_come_from_the_training_labels(tuned):
    low, high = tuned.windows[1][0]
    # around the organ's 110 HU (the low end includes boundary voxels blurred by the smoothing), far above the
    # -100 HU background
    assert 0 < low < 110 < high < 150
    shifted = cm.tune("liver", [blob_case(s, organ_hu=250.0) for s in range(2)], max_search_cases=2)
    assert 100 < shifted.windows[1][0, 0] < 250 < shifted.windows[1][0, 1] < 290
    assert not np.isfinite(tuned.windows[2]).any()  # no tumour in training: an empty tumour window


@pytest.mark.parametrize("method", ["threshold", "edge"])
def test_threshold_and_edge_find_a_bright_blob(tuned, method):
    case = blob_case(10, centre=(18, 22, 9))
    pred = cm.segment("liver", method, case, tuned)
    assert cm.dice(pred >= 1, case.label == 1) > 0.9
    assert not (pred == 2).any()


def test_region_growing_from_a_seed_inside_stops_at_the_boundary(tuned):
    case = blob_case(11, centre=(21, 20, 10))
    seeds = cm.click_seeds("liver", case.label, case.spacing)
    assert case.label[seeds[1]] == 1 and set(seeds) == {1}
    pred = cm.segment("liver", "region_growing", case, tuned, seeds) >= 1
    assert cm.dice(pred, case.label == 1) > 0.9
    # nothing grows past a one-voxel margin around the true blob
    from scipy import ndimage as ndi

    assert not (pred & ~ndi.binary_dilation(case.label == 1, iterations=1)).any()
    grown = cm.grow(cm.features("liver", case), seeds[1], 0, tuned.tolerance[1])
    assert grown.sum() > 0.8 * (case.label == 1).sum()


def test_region_growing_from_a_seed_outside_finds_nothing_of_the_blob(tuned):
    case = blob_case(12)
    feat = cm.features("liver", case)
    outside = cm.grow(feat, (1, 1, 1), 0, tuned.tolerance[1])
    # the background floods, the blob does not (at most its blurred rim, whose smoothed values are background-like)
    assert outside.sum() > 0.5 * (case.label == 0).sum()
    assert (outside & (case.label == 1)).sum() < 0.1 * (case.label == 1).sum()
    assert not (cm.segment("liver", "region_growing", case, tuned, {}) > 0).any()  # no click, no structure


def test_clicks_are_the_deepest_point_of_the_largest_component():
    label = np.zeros((30, 30), np.int16)
    label[2:6, 2:6] = 1  # small square
    label[10:25, 8:21] = 1  # large rectangle, deepest near its centre
    seeds = cm.click_seeds("retinal", label, (1.0, 1.0))
    assert 15 <= seeds[1][0] <= 19 and 12 <= seeds[1][1] <= 16


def test_dice_follows_each_bundles_convention():
    empty, blob = np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 4), np.int16)
    blob[1:3, 1:3, 1:3] = 1
    assert math.isnan(bench.case_dice("lung", empty, empty)["nodule"])  # neither has a nodule
    assert bench.case_dice("lung", blob, empty)["nodule"] == 0.0
    liver = bench.case_dice("liver", blob * 2, blob)  # predicted all tumour, truth all liver
    assert liver["liver"] == 1.0 and math.isnan(liver["tumour"])  # liver = labels 1 and 2; no true tumour
    assert bench.case_dice("cardiac", empty, empty) == {"rv": 1.0, "myo": 1.0, "lv": 1.0}
    fov = np.zeros((4, 4), bool)
    fov[:2] = True
    pred, truth = np.zeros((4, 4), np.int16), np.zeros((4, 4), np.int16)
    pred[3, 3] = 1  # a false positive outside the field of view does not count
    truth[0, 0] = pred[0, 0] = 1
    assert bench.case_dice("retinal", pred, truth, fov)["vessel"] == 1.0


def test_tasks_and_bundles_come_from_the_profiles():
    profiles = [describe(name) for name in bundle_names()]
    assert set(bench.TASK_BUNDLES) == {p.task for p in profiles} & set(cm.CLASSES)
    for task, bundle in bench.TASK_BUNDLES.items():
        profile = describe(bundle)
        assert profile.task == task
        # every class's Dice column is the one the bundle's evaluation writes for that label
        assert bench.metric_columns(task) == {name: profile.dice_keys[i] for name, i in cm.CLASSES[task].items()}
        assert set(bench.metric_columns(task).values()) <= set(profile.dice_keys.values())
    assert bench.make_settings().tasks == tuple(bench.TASK_BUNDLES)


def test_settings_are_checked():
    s = bench.make_settings(quick=True, tasks="liver,lung", epochs={"liver": 3})
    assert s.tasks == ("liver", "lung") and s.epochs["liver"] == 3 and s.epochs["lung"] == 1
    with pytest.raises(ValueError, match="unknown settings"):
        bench.make_settings(budget=3)
    with pytest.raises(ValueError, match="unknown task"):
        bench.make_settings(tasks="kidney")


def test_paths_per_task_are_read_from_the_command_line_string():
    """fire passes ``--ckpt "{lung: /runs/lung/model.pt}"`` as a string (a path is no Python literal)."""
    s = bench.make_settings(ckpt="{lung: /runs/lung/model.pt}", data_dir="{liver: /data/lits, lung: data/lung}")
    assert s.ckpt == {"lung": "/runs/lung/model.pt"}
    assert s.data_dir == {"liver": "/data/lits", "lung": "data/lung"}
    with pytest.raises(ValueError, match="must map tasks"):
        bench.make_settings(ckpt="/runs/lung/model.pt")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one quick-mode run, started as a user starts it."""
    return quick_benchmark(SCRIPT, tmp_path_factory.mktemp("classical"), timeout=600)


def test_quick_run_writes_every_output(quick_run):
    for name in OUTPUTS:
        assert (quick_run / name).stat().st_size > 0, name
    with Image.open(quick_run / "dice.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_quick_run_has_one_row_per_task_method_and_class(quick_run):
    rows = read_csv(quick_run / "results.csv")
    expected = [(t, m, c) for t in bench.TASK_BUNDLES for m in ("network", *cm.METHODS) for c in cm.CLASSES[t]]
    assert sorted((r["task"], r["method"], r["class"]) for r in rows) == sorted(expected)
    for r in rows:
        dice = float(r["dice_mean"])
        if int(r["cases"]) > 0:
            assert 0.0 <= dice <= 1.0 and float(r["dice_std"]) >= 0, r
        else:
            assert math.isnan(dice) and r["task"] in ("liver", "lung"), r  # undefined only where a bundle says so
        assert float(r["seconds_per_case"]) >= 0


def test_quick_run_scores_the_same_cases_for_network_and_classical_methods(quick_run):
    rows = read_csv(quick_run / "per_case.csv")
    for task in bench.TASK_BUNDLES:
        cases = {m: {r["case"] for r in rows if r["task"] == task and r["method"] == m} for m in bench.METHODS}
        assert cases["network"] and all(c == cases["network"] for c in cases.values()), (task, cases)
    report = (quick_run / "results.md").read_text()
    for task in bench.TASK_BUNDLES:
        assert f"## {task}" in report and f"network ({bench.TASK_BUNDLES[task]})" in report
    assert "click" in report and "TRAINING" in report
