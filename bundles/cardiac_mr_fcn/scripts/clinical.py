"""Per-case rows and per-subject clinical indices for the cardiac bundle (volumes, EF, mass, Dice, HD95)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

from common.metrics.clinical import ACDC_CLASSES, indices_from_volumes, label_volumes_ml, voxel_volume_ml
from common.metrics.multiclass import class_scores, voxel_spacing

#: ACDC label indices, in the order of the evaluation columns
CLASSES = ACDC_CLASSES
_PHASE = re.compile(r"^(?P<subject>.+?)[_-](?P<phase>ED|ES)$", re.IGNORECASE)


def subject_and_phase(item: dict[str, Any], case: str) -> tuple[str, str]:
    """Subject id and phase (ED/ES) of a case: from the data list when given, else from a ``<subject>_ED`` name."""
    if item.get("subject") and item.get("phase"):
        return str(item["subject"]), str(item["phase"]).upper()
    match = _PHASE.match(case)
    return (match["subject"], match["phase"].upper()) if match else (case, "")


def _case_name(item: dict[str, Any]) -> str:
    """The case's file stem, from the image metadata."""
    name = str(item["image"].meta.get("filename_or_obj", ""))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name.rsplit("/", 1)[-1][: -len(suffix)]
    return name.rsplit("/", 1)[-1]


def _volumes(label: Any, voxel_ml: float, prefix: str) -> dict[str, float]:
    """LV cavity, RV cavity and myocardium volumes (mL) of a label map, keys ``<prefix><class>_ml``."""
    volumes = label_volumes_ml(label, voxel_ml, CLASSES)
    return {f"{prefix}{name}_ml": volumes[name] for name in CLASSES}


def lv_enclosed_percent(label: Any) -> float:
    """Share (%) of the LV cavity's in-plane border that is myocardium: each LV-cavity pixel's 4 in-plane neighbours
    (slices along the last axis) that are not LV cavity, counted; 100 when the myocardium rings the cavity in every
    slice, NaN without an LV cavity. Outside the image counts as background."""
    values = np.asarray(label.detach().cpu() if hasattr(label, "detach") else label)
    values = np.rint(values[0] if values.ndim == 4 else values).astype(np.int16)
    lv = values == CLASSES["lv"]
    if not lv.any():
        return math.nan
    padded = np.pad(values, [(1, 1), (1, 1)] + [(0, 0)] * (values.ndim - 2))
    border = myo = 0
    for dx, dy in ((0, 1), (2, 1), (1, 0), (1, 2)):  # the 4 in-plane neighbours, as offsets into the padding
        neighbour = padded[dx : dx + values.shape[0], dy : dy + values.shape[1]]
        outside = lv & (neighbour != CLASSES["lv"])
        border += int(outside.sum())
        myo += int((outside & (neighbour == CLASSES["myo"])).sum())
    return 100.0 * myo / border if border else 100.0


def case_volumes(item: dict[str, Any]) -> dict[str, Any]:
    """Inference row: subject, phase, the predicted LV, RV and myocardium volumes (mL) in the input's grid, and how
    much of the LV cavity's border is myocardium (``lv_enclosed_percent``, a plausibility check)."""
    pred = item["pred"]
    subject, phase = subject_and_phase(item, _case_name(item))
    return {"subject": subject, "phase": phase, **_volumes(pred, voxel_volume_ml(pred.affine), ""),
            "lv_enclosed_percent": lv_enclosed_percent(pred)}  # fmt: skip


def case_scores(item: dict[str, Any]) -> dict[str, Any]:
    """Evaluation row in the input's own grid: Dice and 95% Hausdorff distance (mm) per class, and the volumes
    of prediction and ground truth."""
    pred, label = item["pred"], item["native_label"]
    subject, phase = subject_and_phase(item, _case_name(item))
    scores = class_scores(pred, label, CLASSES, voxel_spacing(label.affine))
    row: dict[str, Any] = {"subject": subject, "phase": phase}
    for name in CLASSES:
        row[f"dice_{name}"], row[f"hd95_{name}_mm"] = scores[f"dice_{name}"], scores[f"hd95_{name}_mm"]
    voxel_ml = voxel_volume_ml(label.affine)
    return {**row, **_volumes(pred, voxel_ml, "pred_"), **_volumes(label, voxel_ml, "true_")}


def _by_subject(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Rows grouped as ``{subject: {phase: row}}``."""
    grouped: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        grouped[row["subject"]][row["phase"]] = row
    return grouped


def indices(ed: dict[str, Any], es: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Clinical indices of one subject from its ED and ES rows' ``<prefix><class>_ml`` volumes."""
    return indices_from_volumes(*({name: row[f"{prefix}{name}_ml"] for name in CLASSES} for row in (ed, es)))


def subject_indices(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clinical indices of every subject whose ED and ES frames were both segmented."""
    return [
        {"subject": subject, **indices(phases["ED"], phases["ES"])}
        for subject, phases in sorted(_by_subject(rows).items())
        if {"ED", "ES"} <= set(phases)
    ]


def subject_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per subject with both phases: predicted and true EF, volumes and mass, and the absolute errors."""
    table = []
    for subject, phases in sorted(_by_subject(rows).items()):
        if not {"ED", "ES"} <= set(phases):
            continue
        pred = indices(phases["ED"], phases["ES"], "pred_")
        true = indices(phases["ED"], phases["ES"], "true_")
        row: dict[str, Any] = {"subject": subject}
        for key in ("lv_ef_percent", "rv_ef_percent", "lv_edv_ml", "lv_esv_ml", "myo_mass_ed_g"):
            row[f"pred_{key}"], row[f"true_{key}"] = pred[key], true[key]
            row[f"abs_error_{key}"] = abs(pred[key] - true[key])
        table.append(row)
    return table
