"""Training statistics (common.training_statistics): what training records beside the weights, and the input
warnings and training-label ranges the review flags take from it."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.review import ReviewRow, ReviewRules
from common.training_statistics import (
    TrainingStatistics,
    input_statistics,
    summarise,
    sorted_spacing,
    write_training_statistics,
)


def test_the_spacing_is_sorted_so_voxel_order_and_obliquity_do_not_matter():
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    # the same grid stored slice-first and flipped: voxel axis 0 points along z, 1 along -x, 2 along y
    permuted = np.array([[0, -0.8, 0, 0], [0, 0, 0.8, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])
    assert sorted_spacing(ras, 3) == pytest.approx([0.8, 0.8, 2.5])
    assert sorted_spacing(permuted, 3) == pytest.approx([0.8, 0.8, 2.5])
    oblique = np.eye(4)  # a short-axis stack: 2 mm slices tilted by 0.3 rad
    oblique[:2, :2] = [[0.9 * math.cos(0.3), -2.0 * math.sin(0.3)], [0.9 * math.sin(0.3), 2.0 * math.cos(0.3)]]
    assert sorted_spacing(oblique, 3) == pytest.approx([0.9, 1.0, 2.0])


def test_input_statistics_take_the_original_grid_and_every_channels_percentiles():
    values = torch.stack([torch.arange(100.0).reshape(10, 10), torch.full((10, 10), 3.0)])
    image = MetaTensor(values, affine=torch.diag(torch.tensor([2.0, 2.0, 1.0])))
    image.meta["original_affine"] = np.diag([0.7, 0.5, 1.0])
    stats = input_statistics(image)
    assert stats["spacing_mm"] == pytest.approx([0.5, 0.7])  # the scan's own grid, not the working grid
    assert stats["intensity_percentiles"][0] == pytest.approx(np.percentile(np.arange(100.0), [5, 50, 95]))
    assert stats["intensity_percentiles"][1] == pytest.approx([3.0, 3.0, 3.0])
    assert input_statistics(torch.zeros(1, 4, 4, 4))["spacing_mm"] == [1.0, 1.0, 1.0]  # no metadata


def _case(spacing, percentiles):
    return {"spacing_mm": spacing, "intensity_percentiles": [percentiles]}


def test_the_summary_holds_each_statistics_range_and_the_median_spread():
    inputs = [_case([1.0, 1.0, 2.0], [0.0, 0.4, 0.9]), _case([0.7, 0.7, 3.0], [0.1, 0.5, 0.7]),
              _case([0.8, 0.8, 2.5], [0.0, 0.3, 0.8])]  # fmt: skip
    rows = [{"liver_ml": 1500.0, "count": 2, "flag": True, "name": "a"}, {"liver_ml": 900.0, "count": math.nan}]
    summary = summarise(inputs, rows)
    assert summary["cases"] == 3
    assert summary["spacing_mm"] == {"low": [0.7, 0.7, 2.0], "high": [1.0, 1.0, 3.0]}
    assert summary["intensity"]["low"] == [[0.0, 0.3, 0.7]] and summary["intensity"]["high"] == [[0.1, 0.5, 0.9]]
    assert summary["intensity"]["spread"] == pytest.approx([0.8])  # median of 0.9, 0.6, 0.8
    assert summary["measurements"] == {"liver_ml": [900.0, 1500.0], "count": [2.0, 2.0]}  # numbers only
    with pytest.raises(ValueError, match="at least one case"):
        summarise([], [])


def _statistics() -> TrainingStatistics:
    return TrainingStatistics(summarise([_case([0.8, 0.8, 2.0], [0.0, 0.4, 0.9]), _case([1.0, 1.0, 2.5],
                                                                                      [0.1, 0.5, 0.9])],
                                        [{"liver_ml": 1000.0}, {"liver_ml": 2000.0}]))  # fmt: skip


def test_an_input_like_the_training_images_gives_no_reason():
    assert _statistics().input_reasons(_case([0.9, 0.9, 4.0], [0.05, 0.45, 0.9])) == []


def test_a_coarse_spacing_and_shifted_intensities_are_reasons_naming_axis_and_percentile():
    reasons = _statistics().input_reasons(_case([0.9, 0.9, 6.0], [0.6, 1.0, 1.0]))
    assert reasons[0] == "input spacing 6 mm (coarsest axis) outside the training images' 2-2.5 mm (x2)"
    # the spread is 0.85, the margin half of it: p5 0.6 > 0.1 + 0.425, p50 1.0 > 0.5 + 0.425; p95 1.0 is inside
    assert [r.split(" ")[2] for r in reasons[1:]] == ["p5", "p50"]
    assert "outside the training images' 0-0.1 (normalised, +-0.43)" in reasons[1]
    assert _statistics().input_reasons(_case([0.9, 0.9, 2.0], [0.0, 0.4, 0.9]), spacing_factor=1.0,
                                       intensity_tolerance=0.0) == []  # fmt: skip


def test_a_different_channel_count_is_a_reason():
    given = {"spacing_mm": [1.0, 1.0, 2.0], "intensity_percentiles": [[0, 0.4, 0.9], [0, 0.4, 0.9]]}
    assert _statistics().input_reasons(given) == ["input has 2 channel(s), the training images 1"]


def test_training_labels_widen_the_documented_ranges_and_never_narrow_them():
    stats = _statistics()  # training livers of 1000-2000 mL
    assert stats.measurement_range("liver_ml", (600.0, 3000.0)) == (600.0, 3000.0)  # inside: unchanged
    assert stats.measurement_range("liver_ml", (1500.0, 1800.0)) == pytest.approx((1000 / 1.5, 3000.0))
    assert stats.measurement_range("liver_ml", (None, 1000.0), factor=2.0) == (None, 4000.0)  # open stays open
    assert stats.measurement_range("tumour_ml", (None, 50.0)) is None
    rules = ReviewRules.from_config({"ranges": {"liver_ml": [1500, 2200]}, "training_range_factor": 1.2})
    assert rules.reasons({"liver_ml": 900.0}) == ["liver volume 900 mL outside 1500-2200 mL"]
    # a small liver like those the network was trained on is not a reason; one beyond them is, naming the source
    assert rules.reasons({"liver_ml": 900.0}, stats) == []
    assert rules.reasons({"liver_ml": 2500.0}, stats) == [
        "liver volume 2500 mL outside 833-2400 mL (documented, widened to the training labels')"
    ]


def test_rules_take_the_tolerances_and_refuse_unknown_keys():
    rules = ReviewRules.from_config({"spacing_factor": 3, "intensity_tolerance": 0.25, "max_flip_disagreement": 0.1})
    assert (rules.spacing_factor, rules.intensity_tolerance, rules.max_flip_disagreement) == (3.0, 0.25, 0.1)
    assert rules.reasons({"flip_disagreement": 0.3}) == [
        "unstable: the flipped input's prediction differs on 30 % of the structures (> 10 %)"
    ]
    with pytest.raises(ValueError, match="unknown key.*spacing_factor"):
        ReviewRules.from_config({"spacing_tolerance": 2})


def test_training_writes_the_statistics_of_its_cases_through_the_given_preprocessing(tmp_path):
    datalist = [{"image": i, "label": i % 2} for i in range(5)]

    def transform(item):
        affine = torch.diag(torch.tensor([2.0, 3.0, 1.0]))
        image = MetaTensor(torch.full((1, 4, 4), float(item["image"])), affine=affine)
        label = MetaTensor(torch.full((1, 4, 4), float(item["label"])), affine=image.affine)
        return {"image": image, "label": label}

    def row_fn(item):
        return {"foreground_pixels": float((item["pred"] > 0).sum())}

    path = tmp_path / "models" / "training_statistics.json"
    written = write_training_statistics(datalist, transform, row_fn, path, max_cases=3)
    assert json.loads(path.read_text()) == written
    assert written["cases"] == 3  # cases 0, 2 and 4: spread over the list
    assert written["intensity"]["low"] == [[0.0, 0.0, 0.0]] and written["intensity"]["high"] == [[4.0, 4.0, 4.0]]
    assert written["spacing_mm"] == {"low": [2.0, 3.0], "high": [2.0, 3.0]}
    assert written["measurements"] == {"foreground_pixels": [0.0, 0.0]}  # labels 0, 0, 0 of cases 0, 2, 4
    assert [p.name for p in path.parent.iterdir()] == ["training_statistics.json"]  # no temporary file left


def test_without_the_file_the_documented_ranges_apply_and_a_log_line_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert TrainingStatistics.load(tmp_path / "training_statistics.json") is None
    assert "input warnings are off" in caplog.text
    (tmp_path / "bad.json").write_text('{"cases": 3}')
    with pytest.raises(ValueError, match="bad.json: not a training statistics file"):
        TrainingStatistics.load(tmp_path / "bad.json")


def test_the_review_row_compares_the_network_input_with_the_training_images(tmp_path):
    path = tmp_path / "training_statistics.json"
    path.write_text(json.dumps(_statistics().ranges))
    row = ReviewRow(lambda item: {"liver_ml": 1500.0}, {"ranges": {"liver_ml": [700, 3000]}}, statistics_path=path)
    quality = {"mean_entropy": 0.1, "mean_margin": 0.9, "foreground_fraction": 0.2}
    like_training = MetaTensor(torch.linspace(0.0, 0.9, 1000).reshape(1, 10, 10, 10), affine=torch.eye(4))
    like_training.meta["original_affine"] = np.diag([0.9, 0.9, 2.2, 1.0])
    assert row({"image": like_training, "quality": quality})["review"] is False
    too_bright = like_training + 0.6
    flagged = row({"image": too_bright, "quality": {**quality, "flip_disagreement": 0.05}})
    assert flagged["review"] is True and flagged["review_reasons"].startswith("input intensity p5")
    assert flagged["flip_disagreement"] == 0.05
    with pytest.raises(KeyError, match="'image'"):
        row({"quality": quality})
