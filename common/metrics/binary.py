"""Confusion-matrix scores (Dice, sensitivity, specificity, ...) and ROC AUC of binary masks, inside a region."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc
from monai.utils import convert_to_numpy

__all__ = ["binary_scores", "to_numpy_bool"]


def to_numpy_bool(x: Any) -> np.ndarray:
    """Boolean numpy copy of ``x`` (numpy array, torch tensor or MONAI MetaTensor), nonzero = True, shape unchanged."""
    return np.asarray(convert_to_numpy(x, wrap_sequence=True)) != 0


def _check_shape(name: str, array: np.ndarray, label: np.ndarray) -> None:
    """Raise ValueError naming both shapes when ``array`` and ``label`` differ in shape."""
    if array.shape != label.shape:
        raise ValueError(f"{name} shape {tuple(array.shape)} differs from label shape {tuple(label.shape)}")


def binary_scores(pred: Any, label: Any, prob: Any | None = None, mask: Any | None = None) -> dict[str, float]:
    """Dice, sensitivity, specificity, accuracy, precision and ROC AUC of a binary prediction, restricted to ``mask``.

    Args:
        pred: predicted binary mask, numpy array or torch tensor of any shape; nonzero = foreground.
        label: ground-truth binary mask of the same shape; nonzero = foreground.
        prob: optional foreground probabilities (any real scores) of the same shape, used only for ``auc``.
        mask: optional region of the same shape (e.g. a retinal field of view); nonzero = inside.
            Every score, ``auc`` included, counts only the elements inside it. ``None`` = the whole array.

    Returns:
        A dict of Python floats with keys ``dice`` (= F1), ``sensitivity`` (recall, TP / (TP + FN)),
        ``specificity`` (TN / (TN + FP)), ``accuracy`` ((TP + TN) / N), ``precision`` (TP / (TP + FP)) and
        ``auc`` (ROC AUC of ``prob`` against ``label``; ties count one half).

        Edge cases, all counted inside the mask:

        - ``dice`` is 1.0 when both pred and label are empty (nothing to find, nothing found).
        - ``sensitivity`` is NaN when the label has no foreground.
        - ``specificity`` is NaN when the label has no background.
        - ``precision`` is NaN when pred has no foreground.
        - ``accuracy`` is NaN when the mask is empty.
        - ``auc`` is NaN when ``prob`` is None or only one class of the label is present.

    Raises:
        ValueError: when ``pred``, ``prob`` or ``mask`` differs in shape from ``label`` (the message names both
            shapes), or when ``prob`` holds NaN or infinity inside the mask.
    """
    pred_b, label_b = to_numpy_bool(pred), to_numpy_bool(label)
    _check_shape("pred", pred_b, label_b)
    inside = None if mask is None else to_numpy_bool(mask)
    if inside is not None:
        _check_shape("mask", inside, label_b)
    score = None if prob is None else np.asarray(convert_to_numpy(prob, dtype=np.float64, wrap_sequence=True))
    if score is not None:
        _check_shape("prob", score, label_b)

    def select(array: np.ndarray) -> np.ndarray:
        """The elements of ``array`` inside the region, flattened."""
        return array.ravel() if inside is None else array[inside]

    pred_b, label_b = select(pred_b), select(label_b)
    if score is not None:
        score = select(score)
        if not np.isfinite(score).all():
            raise ValueError("prob holds NaN or infinite values inside the mask")

    tp = int(np.count_nonzero(pred_b & label_b))
    fp = int(np.count_nonzero(pred_b & ~label_b))
    fn = int(np.count_nonzero(~pred_b & label_b))
    tn = int(label_b.size) - tp - fp - fn

    # MONAI's ratios (NaN on a zero denominator) of the exact integer counts, in float64
    matrix = torch.tensor([tp, fp, tn, fn], dtype=torch.float64)
    scores = {"dice": float(compute_confusion_matrix_metric("f1 score", matrix)) if (tp + fp + fn) else 1.0}
    for name in ("sensitivity", "specificity", "accuracy", "precision"):
        scores[name] = float(compute_confusion_matrix_metric(name, matrix))
    scores["auc"] = math.nan

    if score is not None and 0 < tp + fn < label_b.size:  # both classes present inside the mask
        # MONAI's exact AUC (ties count one half); its Python loop takes about 0.65 s per 1e6 elements
        y_score, y_true = torch.from_numpy(score), torch.from_numpy(label_b.astype(np.int64))
        scores["auc"] = float(compute_roc_auc(y_score, y_true))
    return scores
