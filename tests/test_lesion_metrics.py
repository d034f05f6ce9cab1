"""Hand-computed checks of common.metrics.lesions: components, per-lesion measurements, lesion-wise detection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics.lesions import axial_axis, label_components, lesion_table, match_lesions


def box(shape, *slices) -> np.ndarray:
    """A boolean volume with the given box set."""
    mask = np.zeros(shape, bool)
    mask[slices] = True
    return mask


def test_components_use_full_connectivity_by_default():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touch at a corner only
    assert label_components(mask)[1] == 1
    assert label_components(mask, connectivity=1)[1] == 2
    assert label_components(mask[None])[1] == 1  # a channel of size 1 is dropped


def test_lesion_table_hand_computed_with_anisotropic_voxels_and_origin():
    affine = np.diag([0.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    mask = box((20, 20, 10), slice(2, 6), slice(3, 5), slice(4, 5))  # 4 x 2 x 1 voxels
    mask |= box((20, 20, 10), slice(10, 11), slice(10, 11), slice(1, 4))  # 1 x 1 x 3 voxels
    image = np.where(mask, 40.0, -1000.0)
    image[2, 3, 4] = 80.0
    rows = lesion_table(mask, affine, image=image, prob=mask * 0.9)
    assert [r["lesion"] for r in rows] == [1, 2] and [r["voxels"] for r in rows] == [8, 3]
    first, second = rows
    assert first["volume_mm3"] == pytest.approx(8 * 3.0) and first["volume_ml"] == pytest.approx(0.024)
    # centroid of voxel centres (3.5, 3.5, 4) through the affine
    assert (first["centroid_x_mm"], first["centroid_y_mm"], first["centroid_z_mm"]) == pytest.approx((11.75, -13, 17))
    # longest axial diameter between voxel centres: from (2, 3) to (5, 4) -> hypot(3 * 0.5, 1 * 2.0) = 2.5 mm
    assert first["longest_axial_diameter_mm"] == pytest.approx(2.5)
    assert first["equivalent_diameter_mm"] == pytest.approx((6 * 24 / math.pi) ** (1 / 3))
    assert first["mean_intensity"] == pytest.approx((7 * 40 + 80) / 8)
    assert first["mean_probability"] == pytest.approx(0.9) and first["max_probability"] == pytest.approx(0.9)
    # a column along the slice axis has no in-plane extent
    assert second["longest_axial_diameter_mm"] == 0
    # small lesions dropped, ids renumbered
    (kept,) = lesion_table(mask, affine, min_volume_mm3=10)
    assert kept["lesion"] == 1 and kept["voxels"] == 8


def test_axial_axis_follows_the_affine_not_the_storage_order():
    permuted = np.zeros((4, 4))
    permuted[0, 2] = permuted[1, 0] = permuted[2, 1] = 1.5  # voxel axis 1 runs along world z
    permuted[3, 3] = 1
    assert axial_axis(np.eye(4)) == 2
    assert axial_axis(permuted) == 1
    # a disc in the voxel plane across axis 1 is axial there: its diameter is measured in that plane
    mask = np.zeros((9, 3, 9), bool)
    mask[0:9, 1, 4] = True  # 9 voxels along axis 0 (world y, 1.5 mm each)
    (row,) = lesion_table(mask, permuted)
    assert row["longest_axial_diameter_mm"] == pytest.approx(8 * 1.5)


def test_match_lesions_sensitivity_false_positives_and_lesion_dice():
    shape = (30, 30, 10)
    truth = box(shape, slice(2, 6), slice(2, 6), slice(2, 4))  # A: 32 voxels
    truth |= box(shape, slice(20, 22), slice(20, 22), slice(2, 3))  # B: 4 voxels, missed
    pred = box(shape, slice(2, 6), slice(2, 6), slice(3, 5))  # overlaps A by 16, 32 voxels
    pred |= box(shape, slice(12, 14), slice(12, 14), slice(5, 6))  # a false positive
    result = match_lesions(pred, truth)
    assert (result["true_lesions"], result["pred_lesions"], result["detected"]) == (2, 2, 1)
    assert result["sensitivity"] == pytest.approx(0.5)
    assert result["false_positives"] == 1
    per = {r["lesion"]: r for r in result["per_lesion"]}
    assert per[1]["dice"] == pytest.approx(2 * 16 / (32 + 32)) and per[2]["dice"] == 0 and not per[2]["detected"]
    assert result["lesion_dice"] == pytest.approx((0.5 + 0) / 2)


def test_match_lesions_one_prediction_covering_two_lesions_and_empty_cases():
    shape = (20, 20, 4)
    truth = box(shape, slice(2, 4), slice(2, 4), slice(1, 2)) | box(shape, slice(6, 8), slice(2, 4), slice(1, 2))
    pred = box(shape, slice(2, 8), slice(2, 4), slice(1, 2))  # one component spanning both (12 voxels)
    result = match_lesions(pred, truth)
    assert result["detected"] == 2 and result["false_positives"] == 0
    assert result["lesion_dice"] == pytest.approx(2 * 4 / (4 + 12))
    empty = match_lesions(np.zeros(shape, bool), np.zeros(shape, bool))
    assert empty["true_lesions"] == 0 and math.isnan(empty["sensitivity"]) and empty["false_positives"] == 0
    with pytest.raises(ValueError, match="differs"):
        match_lesions(pred, truth[:, :, :3])
