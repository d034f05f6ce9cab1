"""Segmentation metrics shared by the bundles: confusion-matrix scores, ROC AUC, centerline Dice, per-class Dice
and HD95, lesion measurements and lesion-wise detection, and clinical cardiac indices."""

from . import clinical
from .binary import binary_scores, to_numpy_bool
from .centerline import centerline_dice
from .clinical import *  # noqa: F403  (its __all__: the cardiac indices and the ACDC classes)
from .lesions import axial_axis, label_components, lesion_table, match_lesions
from .multiclass import class_scores, voxel_spacing

__all__ = ["binary_scores", "centerline_dice", "class_scores", "to_numpy_bool", "voxel_spacing"]
__all__ += ["axial_axis", "label_components", "lesion_table", "match_lesions"]
__all__ += clinical.__all__
