"""Per-case rows of the liver bundle: liver and tumour measurements at inference, and Dice, HD95 and lesion-wise
detection at evaluation, in each case's own grid."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.metrics.clinical import voxel_volume_ml
from common.metrics.lesions import lesion_table, match_lesions
from common.metrics.multiclass import class_scores, voxel_spacing

LIVER, TUMOUR = 1, 2


def _labels(x: Any) -> np.ndarray:
    """An integer label map without its channel dimension."""
    values = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    return np.rint(values[0] if values.ndim == 4 else values).astype(np.int16)


def liver_measurements(label: Any, affine: Any, min_tumour_ml: float = 0.0) -> dict[str, Any]:
    """Liver volume (parenchyma + tumours, mL), tumour count, total tumour volume, burden (% of the liver) and one
    entry per tumour (volume, centroid in world mm, longest axial and equivalent diameters), largest first."""
    values = _labels(label)
    voxel_ml = voxel_volume_ml(np.asarray(affine))
    tumours = lesion_table(values == TUMOUR, np.asarray(affine), min_volume_mm3=1000.0 * min_tumour_ml)
    liver_ml = float(np.count_nonzero(values >= LIVER)) * voxel_ml
    tumour_ml = float(sum(t["volume_ml"] for t in tumours))
    return {
        "liver_ml": liver_ml,
        "tumour_count": len(tumours),
        "tumour_ml": tumour_ml,
        "tumour_burden_percent": 100.0 * tumour_ml / liver_ml if liver_ml > 0 else math.nan,
        "largest_tumour_diameter_mm": max((t["longest_axial_diameter_mm"] for t in tumours), default=0.0),
        "tumours": tumours,
    }


def case_measurements(item: dict[str, Any]) -> dict[str, Any]:
    """Inference row: the measurements of the predicted segmentation in the input's grid."""
    return liver_measurements(item["pred"], item["pred"].affine)


def case_scores(item: dict[str, Any]) -> dict[str, Any]:
    """Evaluation row: liver Dice (labels 1 and 2, as in LiTS) and HD95, tumour Dice (NaN when the case has no
    tumour), lesion-wise tumour detection, and predicted and true measurements."""
    pred, label = _labels(item["pred"]), _labels(item["native_label"])
    affine = np.asarray(item["native_label"].affine)
    liver = class_scores(pred >= LIVER, label >= LIVER, {"liver": 1}, voxel_spacing(affine))
    has_tumour = bool(np.any(label == TUMOUR))
    tumour_dice = class_scores(pred == TUMOUR, label == TUMOUR, {"tumour": 1})["dice_tumour"]
    lesions = match_lesions(pred == TUMOUR, label == TUMOUR)
    row: dict[str, Any] = {
        **liver,
        "dice_tumour": tumour_dice if has_tumour else math.nan,
        "true_tumours": lesions["true_lesions"],
        "detected_tumours": lesions["detected"],
        "tumour_sensitivity": lesions["sensitivity"],
        "false_positive_tumours": lesions["false_positives"],
        "tumour_lesion_dice": lesions["lesion_dice"],
    }
    for prefix, values in (("pred_", pred), ("true_", label)):
        measured = liver_measurements(values, affine)
        row.update({prefix + k: v for k, v in measured.items() if k != "tumours"})
    return row


def tumour_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per predicted tumour of every case (the derived ``tumours`` table)."""
    return [{"case": row["case"], **tumour} for row in rows for tumour in row.get("tumours", [])]
