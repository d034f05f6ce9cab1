"""Per-class Dice and 95% Hausdorff distance (mm) of a label map against the ground truth, in the image's grid."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from nibabel.affines import voxel_sizes

__all__ = ["class_scores", "voxel_spacing"]


def voxel_spacing(affine: Any) -> list[float]:
    """Voxel sizes (mm) of a grid from its 4x4 affine: the lengths of the first three columns."""
    return [float(s) for s in voxel_sizes(np.asarray(affine, dtype=np.float64))]


def class_scores(pred: Any, label: Any, classes: Mapping[str, int], spacing: Any = None) -> dict[str, float]:
    """Dice and 95% Hausdorff distance per named class: ``{"dice_<name>": ..., "hd95_<name>_mm": ...}``.

    ``pred`` and ``label`` are integer label maps of the same shape, with or without a leading channel of size 1.
    ``spacing`` (voxel sizes in mm, one per spatial axis) scales the distances; ``None`` means 1 per voxel. Dice
    is 1 when a class is absent from both maps and 0 when it is in only one; the distance is NaN when either map
    lacks the class (undefined), never infinite.
    """
    pred_t, label_t = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(label))
    if pred_t.shape != label_t.shape:
        raise ValueError(f"prediction shape {tuple(pred_t.shape)} differs from label shape {tuple(label_t.shape)}")
    if pred_t.ndim == 0 or pred_t.shape[0] != 1:
        pred_t, label_t = pred_t[None], label_t[None]
    pred_t, label_t = (t.round().long() if torch.is_floating_point(t) else t.long() for t in (pred_t, label_t))
    num_classes = max(int(max(classes.values())), int(pred_t.max()), int(label_t.max()), 1) + 1
    pred_1h, label_1h = one_hot(pred_t[None], num_classes=num_classes), one_hot(label_t[None], num_classes=num_classes)
    dice = compute_dice(pred_1h, label_1h, include_background=True, ignore_empty=False)[0]
    spacing = list(spacing) if spacing is not None else None
    hd95 = compute_hausdorff_distance(pred_1h, label_1h, include_background=True, percentile=95, spacing=spacing)[0]
    row: dict[str, float] = {}
    for name, index in classes.items():
        row[f"dice_{name}"] = float(dice[index])
    for name, index in classes.items():
        distance = float(hd95[index])
        row[f"hd95_{name}_mm"] = distance if math.isfinite(distance) else math.nan
    return row
