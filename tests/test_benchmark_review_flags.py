"""The review-flag benchmark: degraded copies of test cases, and the counts of flagged bad and good outputs."""

from __future__ import annotations

import math
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_module, quick_benchmark, read_csv

sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark imports its sibling ``options``
rf = load_module(ROOT / "benchmarks" / "review_flags.py", "review_flags_for_tests")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("imagesTs/subject012_0001.nii.gz", "imagesTs/subject012-noise_0001.nii.gz"),
        ("imagesTs/lung_003.nii.gz", "imagesTs/lung_003-noise.nii.gz"),
        ("images/fundus_001.png", "images/fundus_001-noise.png"),
    ],
)
def test_a_degraded_file_keeps_its_modality_suffix(path, expected):
    assert rf.degraded_name(path, "noise") == expected


def test_intensity_errors_are_those_of_each_kind_of_image():
    rng = np.random.default_rng(0)
    hu = np.array([-1000, 0, 60, 400], np.int16)
    np.testing.assert_array_equal(rf.degrade_intensities(hu, "intensity", "liver", rng), hu + 300.0)
    photo = np.array([0, 100, 200], np.uint8)
    np.testing.assert_array_equal(rf.degrade_intensities(photo, "intensity", "retinal", rng), [0, 25, 50])
    mr = np.linspace(0, 1000, 101).astype(np.float32)
    darker = rf.degrade_intensities(mr, "intensity", "brain", rng)
    assert np.all(np.diff(darker) >= 0) and darker[50] < 0.3 * mr[50]  # same order, another contrast curve
    noisy = rf.degrade_intensities(mr, "noise", "brain", rng)
    assert 0.2 * 980 < np.std(noisy - mr) < 0.45 * 980  # a third of the 1-99 % range


def test_a_cropped_case_keeps_its_geometry_and_its_label_matches(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    (tmp_path / "img").mkdir()
    image = np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img" / "ct_001.nii.gz"))
    nib.save(nib.Nifti1Image((image % 2).astype(np.uint8), affine), str(tmp_path / "img" / "ct_001_seg.nii.gz"))
    entry = {"image": "img/ct_001.nii.gz", "label": "img/ct_001_seg.nii.gz", "subject": "s1"}
    copy = rf.degrade_entry(entry, tmp_path, "crop", "liver", seed=0)
    assert copy["subject"] == "s1-crop" and copy["image"] == "img/ct_001-crop.nii.gz"
    cropped = nib.load(str(tmp_path / copy["image"]))
    np.testing.assert_array_equal(np.asarray(cropped.dataobj), image[:4])
    np.testing.assert_allclose(cropped.affine, affine)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / copy["label"])).dataobj), image[:4] % 2)
    noisy = rf.degrade_entry(entry, tmp_path, "noise", "liver", seed=0)  # the label is copied as it is
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / noisy["label"])).dataobj), image % 2)


def test_a_photograph_is_darkened_as_a_picture(tmp_path):
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(tmp_path / "f.png")
    darken = lambda v: rf.degrade_intensities(v, "intensity", "retinal", None)  # noqa: E731
    rf.rewrite(tmp_path / "f.png", tmp_path / "g.png", darken)
    assert np.asarray(Image.open(tmp_path / "g.png")).tolist() == np.full((4, 6, 3), 50).tolist()


def test_flagged_bad_and_good_outputs_are_counted():
    rows = [
        {"case": "a", "dice_x": "0.9", "dice_y": "0.8", "review": "False"},  # 0.85
        {"case": "b", "dice_x": "0.95", "dice_y": "", "review": "True"},  # 0.95, a good case flagged
        {"case": "c", "dice_x": "0.7", "dice_y": "0.9", "review": "False"},  # 0.8
        {"case": "a-noise", "dice_x": "0.1", "dice_y": "0.3", "review": "True"},  # bad, flagged
        {"case": "b-crop", "dice_x": "0.9", "dice_y": "0.9", "review": "False"},  # degraded, but good
        {"case": "c-intensity", "dice_x": "", "dice_y": "", "review": "False"},  # nothing scored: bad, missed
    ]
    kinds = {"a": "clean", "b": "clean", "c": "clean", "a-noise": "noise", "b-crop": "crop", "c-intensity": "intensity"}
    row = rf.summarize_bundle("x", rows, kinds, {"worst_flagged": 1.0}, bad_ratio=0.8)
    assert row["bad_below_dice"] == pytest.approx(0.8 * 0.85)
    assert (row["bad"], row["bad_flagged"], row["good"], row["good_flagged"]) == (2, 1, 4, 1)
    assert (row["degraded"], row["degraded_flagged"], row["clean_flagged"]) == (3, 1, 1)
    assert row["dice_clean"] == pytest.approx((0.85 + 0.95 + 0.8) / 3, abs=1e-3)
    assert row["worst_flagged"] == 1.0 and math.isnan(row["mean_dice_flagged"])


@pytest.mark.slow
def test_quick_mode_scores_clean_and_degraded_photographs(tmp_path):
    quick_benchmark(ROOT / "benchmarks" / "review_flags.py", tmp_path)
    results, cases = read_csv(tmp_path / "results.csv"), read_csv(tmp_path / "per_case.csv")
    assert [r["bundle"] for r in results] == ["retinal_vessel_unet"] and results[0]["weights"] == "untrained"
    assert results[0]["statistics"] == "from the demo's training set"  # the weights came without them
    assert (tmp_path / "retinal_vessel_unet" / "weights" / "training_statistics.json").is_file()
    assert sorted(c["kind"] for c in cases) == ["clean"] * 3 + ["crop", "intensity", "noise"]
    assert all(c["review"] in ("True", "False") for c in cases)
    assert int(results[0]["bad"]) + int(results[0]["good"]) == 6
    assert "Review flags" in (tmp_path / "results.md").read_text()


def test_the_flip_columns_count_bad_and_good_outputs_the_check_flagged():
    checked = {"extra_s_per_case": 1.234, "cases": {"a": (0.9, True), "b": (0.2, False), "c": (0.7, True)}}
    dice = {"a": 0.1, "b": 0.9, "c": 0.95}
    row = rf.flip_summary(checked, dice, limit=0.5)
    assert row == {"flip_extra_s_per_case": 1.23, "flip_flagged_bad": "1/1", "flip_flagged_good": "1/2"}
    assert math.isnan(rf.flip_summary({}, dice, 0.5)["flip_extra_s_per_case"])


def test_a_bundle_trained_without_flips_is_not_flip_checked(tmp_path):
    assert rf.flip_check("liver_ct_unet3d", tmp_path, tmp_path / "model.pt", tmp_path) == {}  # nothing run
