"""Nodules as instances: the per-nodule table at inference, and voxel and lesion-wise scores at evaluation, in
each case's own grid (components under the minimum size are removed by ``common.transforms.RemoveSmallComponentsd``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.metrics.clinical import voxel_volume_ml
from common.metrics.lesions import lesion_table, match_lesions

NODULE = 1
#: size (equivalent diameter, mm) from which nodules count for the restricted sensitivity
LARGE_NODULE_MM = 5.0


def _labels(x: Any) -> np.ndarray:
    """An integer label map without its channel dimension."""
    values = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    return np.rint(values[0] if values.ndim == 4 else values).astype(np.int16)


def _affine(x: Any) -> np.ndarray:
    """The 4x4 affine of a MetaTensor."""
    return np.asarray(x.affine.detach().cpu() if hasattr(x.affine, "detach") else x.affine, dtype=np.float64)


def nodule_table(label: Any, affine: Any, image: Any = None, prob: Any = None, min_nodule_mm3: float = 0.0):
    """One row per nodule, largest first: id, centroid (world mm), volume (mm3), equivalent and longest axial
    diameters (mm), and, when given, mean HU of ``image`` and mean/max nodule probability of ``prob``."""
    rows = lesion_table(_labels(label) == NODULE, affine, image=image, prob=prob, min_volume_mm3=min_nodule_mm3)
    table = []
    for row in rows:
        entry = {
            "nodule": row["lesion"],
            "centroid_x_mm": round(row["centroid_x_mm"], 2),
            "centroid_y_mm": round(row["centroid_y_mm"], 2),
            "centroid_z_mm": round(row["centroid_z_mm"], 2),
            "volume_mm3": round(row["volume_mm3"], 2),
            "equivalent_diameter_mm": round(row["equivalent_diameter_mm"], 2),
            "longest_axial_diameter_mm": round(row["longest_axial_diameter_mm"], 2),
        }
        if "mean_intensity" in row:
            entry["mean_hu"] = round(row["mean_intensity"], 1)
        if "mean_probability" in row:
            entry["mean_probability"] = round(row["mean_probability"], 4)
            entry["max_probability"] = round(row["max_probability"], 4)
        table.append(entry)
    return table


def case_measurements(item: dict[str, Any]) -> dict[str, Any]:
    """Inference row: nodule count, total volume, largest diameter and the nodule table of the written segmentation."""
    pred = item["pred"]
    hu = item.get("hu")
    prob = item.get("prob")
    nodules = nodule_table(
        pred,
        _affine(pred),
        image=None if hu is None else _labels_float(hu),
        prob=None if prob is None else _labels_float(prob, channel=-1),  # the nodule is the last channel
    )
    return {
        "nodule_count": len(nodules),
        "total_volume_mm3": round(sum(n["volume_mm3"] for n in nodules), 2),
        "largest_diameter_mm": max((n["longest_axial_diameter_mm"] for n in nodules), default=0.0),
        "nodules": nodules,
    }


def _labels_float(x: Any, channel: int = 0) -> np.ndarray:
    """One channel of a channel-first tensor as an array, not copied (``lesion_table`` converts the lesions' box)."""
    values = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    return values[channel] if values.ndim == 4 else values


def case_scores(item: dict[str, Any], large_mm: float = LARGE_NODULE_MM) -> dict[str, Any]:
    """Evaluation row: voxel Dice of the nodules (NaN when neither has any), lesion-wise sensitivity, false
    positives and lesion Dice, and the sensitivity restricted to true nodules of ``large_mm`` and more."""
    pred, label = _labels(item["pred"]) == NODULE, _labels(item["native_label"]) == NODULE
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    voxel = 1000.0 * voxel_volume_ml(_affine(item["native_label"]))  # mm3
    total = int(pred.sum() + label.sum())
    lesions = match_lesions(pred, label)
    large = [r for r in lesions["per_lesion"] if (6.0 * r["voxels"] * voxel / math.pi) ** (1.0 / 3.0) >= large_mm]
    detected_large = sum(r["detected"] for r in large)
    return {
        "dice": 2.0 * float((pred & label).sum()) / total if total else math.nan,
        "true_nodules": lesions["true_lesions"],
        "pred_nodules": lesions["pred_lesions"],
        "detected_nodules": lesions["detected"],
        "sensitivity": lesions["sensitivity"],
        "false_positives": lesions["false_positives"],
        "lesion_dice": lesions["lesion_dice"],
        "true_nodules_5mm": len(large),
        "detected_nodules_5mm": detected_large,
        "sensitivity_5mm": detected_large / len(large) if large else math.nan,
        "true_volume_mm3": round(float(label.sum()) * voxel, 2),
        "pred_volume_mm3": round(float(pred.sum()) * voxel, 2),
    }


def nodule_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per predicted nodule of every case (the derived ``nodules`` table)."""
    return [{"case": row["case"], **nodule} for row in rows for nodule in row.get("nodules", [])]
