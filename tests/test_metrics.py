"""Hand-computed checks of common.metrics: confusion-matrix scores, ROC AUC and centerline Dice."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi
from skimage.draw import line
from skimage.morphology import skeletonize

from common.metrics import binary_scores, centerline_dice, class_scores, to_numpy_bool, voxel_spacing

# ---------------------------------------------------------------- binary_scores

# label          pred           outcome per pixel
# 1 1 0 0        1 0 0 0        TP FN TN TN
# 1 1 0 0        1 1 1 0        TP TP FP TN
# 0 0 0 0        0 0 0 0        TN TN TN TN
# 0 0 0 1        0 0 1 1        TN TN FP TP
# TP = 4, FN = 1, FP = 2, TN = 9, N = 16
LABEL = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
PRED = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=np.uint8)


def assert_scores(scores: dict[str, float], expected: dict[str, float]) -> None:
    """Every expected key matches to 1e-12, NaN matching NaN."""
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(scores[key]), f"{key}: {scores[key]} is not NaN"
        else:
            assert scores[key] == pytest.approx(value, abs=1e-12), key


def test_binary_scores_hand_computed() -> None:
    scores = binary_scores(PRED, LABEL)
    assert set(scores) == {"dice", "sensitivity", "specificity", "accuracy", "precision", "auc"}
    assert_scores(
        scores,
        {
            "dice": 8 / 11,  # 2TP / (2TP + FP + FN) = 8 / (8 + 2 + 1)
            "sensitivity": 4 / 5,  # TP / (TP + FN)
            "specificity": 9 / 11,  # TN / (TN + FP)
            "accuracy": 13 / 16,  # (TP + TN) / N
            "precision": 4 / 6,  # TP / (TP + FP)
            "auc": math.nan,  # no prob given
        },
    )


def test_binary_scores_mask_restricts_counts() -> None:
    # The mask leaves out column 2: its two FPs (rows 1 and 3) and two TNs (rows 0 and 2).
    # Inside: TP = 4, FN = 1, FP = 0, TN = 7, N = 12.
    mask = np.ones((4, 4), dtype=bool)
    mask[:, 2] = False
    assert_scores(
        binary_scores(PRED, LABEL, mask=mask),
        {
            "dice": 8 / 9,  # 8 / (8 + 0 + 1)
            "sensitivity": 4 / 5,  # unchanged: no label foreground is masked out
            "specificity": 7 / 7,  # was 9/11
            "accuracy": 11 / 12,  # was 13/16
            "precision": 4 / 4,
        },
    )


def test_binary_scores_nonzero_is_foreground() -> None:
    # 0/255 images and float masks read the same as 0/1
    expected = binary_scores(PRED, LABEL)
    assert_scores(binary_scores(PRED.astype(np.float32) * 0.5, LABEL * 255), expected)


def test_auc_hand_computed() -> None:
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4; of the 4 (pos, neg) pairs only (0.35, 0.4) is
    # ordered wrongly -> AUC = 3/4
    label = np.array([0, 0, 1, 1])
    prob = np.array([0.1, 0.4, 0.35, 0.8])
    assert binary_scores(prob > 0.5, label, prob=prob)["auc"] == pytest.approx(0.75, abs=1e-12)


def test_auc_ties_count_half() -> None:
    # pairs: (0.5, 0.2) right, (0.5, 0.5) tie = 1/2, (0.9, 0.2) and (0.9, 0.5) right -> 3.5 / 4
    label = np.array([0, 0, 1, 1])
    prob = np.array([0.2, 0.5, 0.5, 0.9])
    assert binary_scores(prob > 0.5, label, prob=prob)["auc"] == pytest.approx(0.875, abs=1e-12)


def test_auc_perfect_separation_and_mask() -> None:
    label = np.array([0, 0, 1, 1])
    assert binary_scores(label, label, prob=np.array([0.1, 0.2, 0.7, 0.9]))["auc"] == 1.0
    # masking out the wrongly ordered negative (0.4) of the 3/4 case leaves a perfect ranking
    prob = np.array([0.1, 0.4, 0.35, 0.8])
    mask = np.array([1, 0, 1, 1])
    assert binary_scores(prob > 0.5, label, prob=prob, mask=mask)["auc"] == 1.0


def test_auc_nan_with_one_class() -> None:
    prob = np.array([0.1, 0.4, 0.35, 0.8])
    assert math.isnan(binary_scores(prob > 0.5, np.zeros(4), prob=prob)["auc"])
    assert math.isnan(binary_scores(prob > 0.5, np.ones(4), prob=prob)["auc"])
    # both classes in the image, but only negatives inside the mask
    label, mask = np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])
    assert math.isnan(binary_scores(prob > 0.5, label, prob=prob, mask=mask)["auc"])


def test_auc_rejects_nan_prob() -> None:
    with pytest.raises(ValueError, match="NaN"):
        binary_scores(np.zeros(3), np.array([0, 1, 1]), prob=np.array([0.1, np.nan, 0.8]))


def test_edge_cases() -> None:
    empty = np.zeros((3, 3))
    # empty pred, empty label: perfect Dice, no foreground to detect, nothing predicted
    assert_scores(
        binary_scores(empty, empty),
        {"dice": 1.0, "sensitivity": math.nan, "specificity": 1.0, "accuracy": 1.0, "precision": math.nan},
    )
    # all-foreground label: no background, so specificity is undefined
    full = np.ones((3, 3))
    assert_scores(binary_scores(full, full), {"dice": 1.0, "sensitivity": 1.0, "specificity": math.nan})
    # one side empty: Dice 0
    assert binary_scores(empty, full)["dice"] == 0.0
    # empty mask: nothing counted
    assert_scores(binary_scores(full, full, mask=empty), {"dice": 1.0, "accuracy": math.nan})


@pytest.mark.parametrize("which", ["pred", "prob", "mask"])
def test_shape_mismatch_names_both_shapes(which: str) -> None:
    args = {"pred": np.zeros((4, 4)), "label": np.zeros((4, 4)), "prob": np.zeros((4, 4)), "mask": np.ones((4, 4))}
    args[which] = np.zeros((4, 5))
    with pytest.raises(ValueError) as error:
        binary_scores(**args)
    assert "(4, 5)" in str(error.value) and "(4, 4)" in str(error.value)


def test_torch_input_matches_numpy() -> None:
    prob = np.linspace(0.0, 1.0, 16).reshape(4, 4)
    mask = np.ones((4, 4), dtype=bool)
    mask[0, 3] = False
    expected = binary_scores(PRED, LABEL, prob=prob, mask=mask)
    pred_t, label_t, prob_t, mask_t = (torch.from_numpy(a) for a in (PRED, LABEL, prob, mask))
    as_torch = binary_scores(pred_t, label_t, prob=prob_t, mask=mask_t)
    meta = binary_scores(MetaTensor(torch.from_numpy(PRED)), MetaTensor(torch.from_numpy(LABEL)), prob=MetaTensor(prob))
    assert as_torch == expected
    assert_scores(meta, binary_scores(PRED, LABEL, prob=prob))


def test_to_numpy_bool_keeps_shape() -> None:
    x = to_numpy_bool(MetaTensor(torch.tensor([[[0.0, 2.0, -1.0]]])))
    assert isinstance(x, np.ndarray) and x.dtype == bool
    assert x.shape == (1, 1, 3)
    assert x.tolist() == [[[False, True, True]]]


# ---------------------------------------------------------------- centerline_dice


def bar_label() -> np.ndarray:
    """A horizontal bar 3 px thick (rows 3-5) and 11 px long (columns 2-12) in a 9x15 image."""
    label = np.zeros((9, 15), dtype=bool)
    label[3:6, 2:13] = True
    return label


def test_centerline_dice_hand_computed() -> None:
    label = bar_label()
    # Zhang-Suen thinning keeps row 4 from column 2 to 10 and ends in one step up, at (3, 11): 10 px
    expected_label_skeleton = [(4, c) for c in range(2, 11)] + [(3, 11)]
    assert sorted(map(tuple, np.argwhere(skeletonize(label)).tolist())) == sorted(expected_label_skeleton)

    pred = np.zeros_like(label)
    pred[3:6, 2:7] = True  # the left 5 columns of the bar
    # its skeleton: (4, 2), (4, 3), (4, 4) and the step up at (3, 5): 4 px, all inside the label
    expected_pred_skeleton = [(4, 2), (4, 3), (4, 4), (3, 5)]
    assert sorted(map(tuple, np.argwhere(skeletonize(pred)).tolist())) == sorted(expected_pred_skeleton)

    # Tprec = |S(pred) ∩ label| / |S(pred)| = 4 / 4 = 1
    # Tsens = |S(label) ∩ pred| / |S(label)| = 5 / 10 (columns 2-6 of row 4) = 1/2
    # clDice = 2 * 1 * 1/2 / (1 + 1/2) = 2/3
    assert centerline_dice(pred, label) == pytest.approx(2 / 3, abs=1e-6)
    assert centerline_dice(label, pred) == pytest.approx(2 / 3, abs=1e-6)  # symmetric: the terms swap


def test_centerline_dice_hand_computed_false_positive_vessel() -> None:
    label = bar_label()
    pred = np.zeros_like(label)
    pred[3:6, 2:7] = True  # left part of the bar, skeleton 4 px inside the label (see above)
    pred[1:8, 14] = True  # a spurious 1-px vessel, 7 px long, outside the label
    assert np.count_nonzero(skeletonize(pred)) == 4 + 7
    # Tprec = 4 / 11, Tsens = 5 / 10 = 1/2
    # clDice = 2 * 4/11 * 1/2 / (4/11 + 1/2) = (4/11) / (19/22) = 8/19
    assert centerline_dice(pred, label) == pytest.approx(8 / 19, abs=1e-6)


def test_centerline_dice_trivial_cases() -> None:
    label = bar_label()
    empty = np.zeros_like(label)
    elsewhere = np.zeros_like(label)
    elsewhere[7:9, 0:15] = True  # a bar below the label, touching none of it
    assert centerline_dice(label, label) == 1.0
    assert centerline_dice(elsewhere, label) == 0.0
    assert centerline_dice(empty, empty) == 1.0
    assert centerline_dice(empty, label) == 0.0
    assert centerline_dice(label, empty) == 0.0


def test_centerline_dice_empty_skeleton_guard() -> None:
    # Lee's 3D thinning removes a 2x2x2 cube entirely: both skeletons are empty, both terms count 0
    cube = np.zeros((4, 4, 4), dtype=bool)
    cube[1:3, 1:3, 1:3] = True
    assert not skeletonize(cube).any()
    assert centerline_dice(cube, cube) == 0.0


def tube_label() -> np.ndarray:
    """A 3D tube of radius 2 voxels along the last axis (z = 2..17) in a 9x9x20 volume."""
    yy, xx = np.mgrid[:9, :9]
    disk = (yy - 4) ** 2 + (xx - 4) ** 2 <= 4
    tube = np.zeros((9, 9, 20), dtype=bool)
    tube[disk, 2:18] = True
    return tube


def test_centerline_dice_3d_tube() -> None:
    tube = tube_label()
    # the skeleton is the tube's axis, shortened by one voxel at each end
    assert sorted(map(tuple, np.argwhere(skeletonize(tube)).tolist())) == [(4, 4, z) for z in range(3, 17)]
    assert centerline_dice(tube, tube) == 1.0
    assert centerline_dice(torch.from_numpy(tube), torch.from_numpy(tube)) == 1.0


def curved_vessel() -> np.ndarray:
    """A sine-shaped vessel about 3 px thick in a 64x64 image."""
    centerline = np.zeros((64, 64), dtype=bool)
    x = np.arange(5, 59)
    y = (32 + 12 * np.sin(x / 9)).astype(int)
    for i in range(len(x) - 1):
        rows, cols = line(y[i], x[i], y[i + 1], x[i + 1])
        centerline[rows, cols] = True
    return ndi.binary_dilation(centerline)


@pytest.mark.parametrize("make_label", [bar_label, curved_vessel, tube_label])
def test_centerline_dice_ignores_thickness(make_label: Callable[[], np.ndarray]) -> None:
    # a prediction 1 px too thick all round: plain Dice drops well below 1, clDice stays at 1
    label = make_label()
    pred = ndi.binary_dilation(label)  # face-connected (cross-shaped) structuring element
    assert binary_scores(pred, label)["dice"] < 0.8
    assert centerline_dice(pred, label) == pytest.approx(1.0, abs=1e-6)


def test_centerline_dice_bar_thickness_numbers() -> None:
    # bar: |label| = 33; dilation adds rows 2 and 6 (2 x 11) and columns 1 and 13 (2 x 3): |pred| = 61
    label = bar_label()
    pred = ndi.binary_dilation(label)
    assert np.count_nonzero(pred) == 61
    assert binary_scores(pred, label)["dice"] == pytest.approx(2 * 33 / (33 + 61), abs=1e-12)


def test_centerline_dice_channel_first() -> None:
    label = bar_label()
    pred = np.zeros_like(label)
    pred[3:6, 2:7] = True
    assert centerline_dice(pred[None], label[None], channel_first=True) == pytest.approx(2 / 3, abs=1e-6)
    tube = tube_label()
    assert centerline_dice(MetaTensor(torch.from_numpy(tube[None])), tube[None], channel_first=True) == 1.0
    with pytest.raises(ValueError, match="size 1"):
        centerline_dice(np.zeros((2, 5, 5)), np.zeros((2, 5, 5)), channel_first=True)


def test_centerline_dice_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError) as error:
        centerline_dice(np.zeros((9, 15)), np.zeros((9, 14)))
    assert "(9, 15)" in str(error.value) and "(9, 14)" in str(error.value)
    with pytest.raises(ValueError, match="2D or 3D"):
        centerline_dice(np.zeros(5), np.zeros(5))


# ---------------------------------------------------------------- class_scores (per-class Dice and HD95)


def test_class_scores_hand_computed():
    pred, label = np.zeros((1, 10, 10), int), np.zeros((1, 10, 10), int)
    pred[0, 2:6, 2:6] = 1  # 16 pixels
    label[0, 2:6, 3:7] = 1  # 16 pixels, 12 shared: Dice 24/32; every boundary point within 1 column
    pred[0, 8, 8] = 2  # class 2 predicted but absent from the label
    scores = class_scores(pred, label, {"a": 1, "b": 2, "c": 3}, spacing=[1.0, 2.5])
    assert scores["dice_a"] == pytest.approx(0.75)
    assert scores["hd95_a_mm"] == pytest.approx(2.5)  # one column = 2.5 mm along the second axis
    assert scores["dice_b"] == 0 and math.isnan(scores["hd95_b_mm"])
    assert scores["dice_c"] == 1 and math.isnan(scores["hd95_c_mm"])  # absent from both: perfect, distance undefined
    assert class_scores(pred[0], label[0], {"a": 1})["hd95_a_mm"] == pytest.approx(1.0)  # no channel, 1 mm voxels
    assert class_scores(pred == 1, label == 1, {"a": 1})["dice_a"] == pytest.approx(0.75)  # boolean masks
    with pytest.raises(ValueError, match="differs"):
        class_scores(pred, label[:, :9], {"a": 1})


def test_voxel_spacing_of_an_oblique_affine():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([0.8, 1.2, 3.0])
    assert voxel_spacing(affine) == pytest.approx([0.8, 1.2, 3.0])
