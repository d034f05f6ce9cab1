"""Segmentation metrics shared by the bundles: confusion-matrix scores, ROC AUC and centerline Dice."""

from .binary import binary_scores, to_numpy_bool
from .centerline import centerline_dice

__all__ = ["binary_scores", "centerline_dice", "to_numpy_bool"]
