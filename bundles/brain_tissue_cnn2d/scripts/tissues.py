"""Per-case rows of the brain tissue bundle: tissue volumes (mL) at inference, Dice and HD95 per tissue at
evaluation, in each case's own grid."""

from __future__ import annotations

from typing import Any

from common.metrics.clinical import label_volumes_ml, voxel_volume_ml
from common.metrics.multiclass import class_scores, voxel_spacing

#: our label indices by tissue, in the order of the table columns
TISSUES = {"csf": 1, "gm": 2, "wm": 3}


def tissue_volumes_ml(label: Any, affine: Any) -> dict[str, float]:
    """CSF, grey and white matter volumes (mL), brain (GM + WM) and intracranial (CSF + GM + WM) volumes."""
    volumes = label_volumes_ml(label, voxel_volume_ml(affine), TISSUES)
    volumes["brain"] = volumes["gm"] + volumes["wm"]
    volumes["intracranial"] = volumes["brain"] + volumes["csf"]
    return {f"{name}_ml": value for name, value in volumes.items()}


def case_volumes(item: dict[str, Any]) -> dict[str, Any]:
    """Inference row: the predicted tissue volumes (mL) of one case."""
    return tissue_volumes_ml(item["pred"], item["pred"].affine)


def case_scores(item: dict[str, Any]) -> dict[str, Any]:
    """Evaluation row: Dice and 95% Hausdorff distance (mm) per tissue, and predicted and true volumes (mL)."""
    pred, label = item["pred"], item["native_label"]
    row: dict[str, Any] = dict(class_scores(pred, label, TISSUES, voxel_spacing(label.affine)))
    for prefix, volumes in (
        ("pred_", tissue_volumes_ml(pred, label.affine)),
        ("true_", tissue_volumes_ml(label, label.affine)),
    ):
        row.update({prefix + name: value for name, value in volumes.items()})
    return row
