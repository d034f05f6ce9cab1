"""Per-case rows for the retinal bundle: vessel measurements at inference and scores at evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics import binary_scores, centerline_dice


def _plane(x: Any) -> np.ndarray:
    """The single channel of a channel-first 2D array as numpy."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x[0] if x.ndim == 3 else x


def vessel_measurements(item: dict[str, Any]) -> dict[str, float]:
    """What a reader of the segmentation wants per photograph: FOV and vessel area, and vessel density (%)."""
    pred, fov = _plane(item["pred"]) > 0, _plane(item["mask"]) > 0
    fov_pixels, vessel_pixels = int(fov.sum()), int((pred & fov).sum())
    return {
        "height": pred.shape[1],
        "width": pred.shape[0],
        "fov_pixels": fov_pixels,
        "vessel_pixels": vessel_pixels,
        "vessel_density_percent": 100.0 * vessel_pixels / max(fov_pixels, 1),
    }


def vessel_scores(item: dict[str, Any]) -> dict[str, float]:
    """Dice, sensitivity, specificity, accuracy, AUC inside the FOV, and centre-line Dice, for one photograph."""
    pred, label, fov = _plane(item["pred"]) > 0, _plane(item["label"]) > 0, _plane(item["mask"]) > 0
    scores = binary_scores(pred, label, prob=_plane(item["prob_vessel"]), mask=fov)
    scores["cldice"] = centerline_dice(pred & fov, label & fov)
    return scores
