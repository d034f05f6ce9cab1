"""Peers benchmark: a data set converted to nnU-Net v2's raw layout, the shared scoring on hand-made cases whose answer
is known, and the quick run (nnU-Net and the retinal bundle each trained seconds, scored on the same test cases)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_module, quick_benchmark, read_csv

SCRIPT = ROOT / "benchmarks" / "peers.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
nb = load_module(ROOT / "benchmarks" / "nnunet_budget.py", "nnunet_budget")
peers = load_module(SCRIPT, "benchmark_peers")


def _photo(path: Path, value: int) -> None:
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(path)


def test_conversion_writes_nnunet_raw_layout(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    entries = []
    for k in range(3):
        _photo(data / "img" / f"eye{k}.png", 40 * k)
        mask = np.zeros((8, 10), np.uint8)
        mask[2:5, 3:7] = 255  # stored 0/255, as fundus vessel maps are
        Image.fromarray(mask).save(data / "img" / f"eye{k}_vessels.png")
        entries.append({"image": f"img/eye{k}.png", "label": f"img/eye{k}_vessels.png"})
    folder = nb.convert(data, tmp_path / "raw", 7, "Eyes", {0: "R", 1: "G", 2: "B"}, {0: "background", 1: "vessel"},
                        entries[:2], entries[2:])  # fmt: skip
    assert folder.name == "Dataset007_Eyes"
    description = json.loads((folder / "dataset.json").read_text())
    assert description == {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "vessel": 1},
                           "numTraining": 2, "file_ending": ".png", "name": "Eyes"}  # fmt: skip
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["eye0_0000.png", "eye1_0000.png"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["eye2_0000.png"]
    label = np.asarray(Image.open(folder / "labelsTr" / "eye1.png"))
    assert set(np.unique(label)) == {0, 1} and label.sum() == 12  # re-coded 0/1, the same pixels
    assert np.array_equal(np.asarray(Image.open(folder / "imagesTr" / "eye1_0000.png")), np.full((8, 10, 3), 40))


def test_multimodal_cases_keep_their_channel_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for c in range(3):
        nib.save(nib.Nifti1Image(np.full((4, 4, 2), c, np.float32), np.eye(4)), data / f"s1_{c:04d}.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), np.eye(4)), data / "s1.nii.gz")
    entry = {"image": [f"s1_{c:04d}.nii.gz" for c in range(3)], "label": "s1.nii.gz"}
    assert nb.case_name(entry) == "s1"
    folder = nb.convert(data, tmp_path / "raw", 3, "Brain", {0: "T1", 1: "T2", 2: "FLAIR"},
                        {0: "background", 1: "csf", 2: "gm", 3: "wm"}, [entry], [])  # fmt: skip
    for c in range(3):
        channel = nib.load(folder / "imagesTr" / f"s1_{c:04d}.nii.gz")
        assert float(channel.get_fdata().mean()) == c
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "csf": 1, "gm": 2, "wm": 3}


def test_scores_match_hand_computed_cases():
    label = np.zeros((10, 10), np.int16)
    label[2:6, 2:6] = 1  # 16 pixels
    pred = np.zeros_like(label)
    pred[2:6, 2:4] = 1  # 8 of them
    pred[8, 8] = 1  # one more, outside the field of view below
    mask = np.ones((10, 10), bool)
    mask[7:, 7:] = False
    scores = peers.score_case("retinal", pred, label, (1.0, 1.0), mask)
    assert scores["dice_vessel"] == pytest.approx(2 * 8 / (8 + 16))
    assert scores["hd95_vessel_mm"] == pytest.approx(2.0)  # the missed half is at most 2 px from the found one
    no_mask = peers.score_case("retinal", pred, label, (1.0, 1.0), None)
    assert no_mask["dice_vessel"] == pytest.approx(2 * 8 / (9 + 16))


def test_lesions_are_counted_per_component():
    label = np.zeros((12, 12, 4), np.int16)
    label[1:9, 1:9] = 1
    label[2:4, 2:4, 1:3] = 2  # tumour found
    label[6:8, 6:8, 1:3] = 2  # tumour missed
    pred = np.where(label > 0, 1, 0).astype(np.int16)
    pred[2:4, 2:4, 1:3] = 2
    pred[10:12, 10:12, 0:2] = 2  # a false positive outside the liver
    scores = peers.score_case("liver", pred, label, (1.0, 1.0, 2.0), None)
    assert (scores["true_lesions"], scores["detected"], scores["false_positives"]) == (2, 1, 1)
    liver = 8 * 8 * 4
    assert scores["dice_liver"] == pytest.approx(2 * liver / (liver + liver + 8))
    assert scores["dice_tumour"] == pytest.approx(2 * 8 / (16 + 16))
    assert math.isnan(peers.score_case("liver", pred * 0, label * (label < 2), (1.0,) * 3, None)["dice_tumour"])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """The benchmark's quick mode: nnU-Net v2 and the retinal bundle trained for seconds each."""
    return quick_benchmark(SCRIPT, tmp_path_factory.mktemp("peers"), timeout=900)


@pytest.mark.slow
def test_quick_run_trains_and_scores_both_systems(quick_run):
    for name in ("results.csv", "per_case.csv", "curves.csv", "results.md", "curves.png"):
        assert (quick_run / name).stat().st_size > 0, name
    rows = read_csv(quick_run / "results.csv")
    assert [r["system"] for r in rows] == ["bundle", "nnunet"]
    for r in rows:
        assert 0.0 <= float(r["dice_vessel"]) <= 1.0, r
        assert float(r["train_s"]) >= float(r["budget_s"]), r  # stopped at the budget, not before
        assert int(r["iterations"]) > 0 and float(r["inference_s_per_case"]) > 0, r
    cases = read_csv(quick_run / "per_case.csv")
    by_system = {s: sorted(r["case"] for r in cases if r["system"] == s) for s in ("bundle", "nnunet")}
    assert by_system["bundle"] == by_system["nnunet"] and len(by_system["bundle"]) == 2
    nnunet_raw = next((quick_run / "retinal_vessel_unet" / "nnunet" / "raw").glob("Dataset*"))
    assert json.loads((nnunet_raw / "dataset.json").read_text())["file_ending"] == ".png"
    predictions = sorted((quick_run / "retinal_vessel_unet" / "nnunet_pred").glob("*.png"))
    assert [p.stem for p in predictions] == by_system["nnunet"]
    with Image.open(quick_run / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600
