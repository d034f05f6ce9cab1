"""Centerline Dice (clDice), a topology-aware overlap score for tubular structures such as vessels."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.morphology import skeletonize

from .binary import to_numpy_bool

__all__ = ["centerline_dice"]


def _topology_fraction(skeleton: np.ndarray, other: np.ndarray) -> float:
    """Fraction of the skeleton's pixels that lie inside ``other`` (0.0 for an empty skeleton)."""
    n_skeleton = int(np.count_nonzero(skeleton))
    return np.count_nonzero(skeleton & other) / n_skeleton if n_skeleton else 0.0


def centerline_dice(pred: Any, label: Any, channel_first: bool = False) -> float:
    """Centerline Dice of two binary 2D or 3D masks (Shit et al., CVPR 2021).

    Reference: S. Shit, J. C. Paetzold, A. Sekuboyina, I. Ezhov, A. Unger, A. Zhylka, J. P. W. Pluim,
    U. Bauer and B. H. Menze, "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
    Segmentation", CVPR 2021, pp. 16560-16569.

    With ``S`` the morphological skeleton (``skimage.morphology.skeletonize``: Zhang-Suen thinning in 2D,
    Lee's thinning in 3D)::

        Tprec  = |S(pred) ∩ label| / |S(pred)|    (topology precision)
        Tsens  = |S(label) ∩ pred| / |S(label)|   (topology sensitivity)
        clDice = 2 * Tprec * Tsens / (Tprec + Tsens)

    The score depends on the centerlines, so it barely changes with vessel thickness, but it drops when
    a vessel is missed, broken or hallucinated.

    Args:
        pred: predicted binary mask, numpy array or torch tensor, 2D ``(H, W)`` or 3D ``(H, W, D)``;
            nonzero = foreground.
        label: ground-truth binary mask of the same shape; nonzero = foreground.
        channel_first: the inputs carry a leading channel dimension of size 1 (``(1, H, W)`` or
            ``(1, H, W, D)``), which is dropped. Without it a 3-dimensional input is read as a 3D volume.

    Returns:
        clDice in [0, 1]. Both masks empty: 1.0. Exactly one empty: 0.0. A skeleton that comes out empty
        although its mask is not makes its term 0 (rare in 2D; in 3D, Lee's thinning removes blobs as small
        as a 2x2x2 cube entirely, so two identical such blobs score 0.0).

    Raises:
        ValueError: when the shapes differ (the message names both), when ``channel_first`` is set but the
            first dimension is not of size 1, or when the masks are not 2D or 3D.
    """
    pred_b, label_b = to_numpy_bool(pred), to_numpy_bool(label)
    if pred_b.shape != label_b.shape:
        raise ValueError(f"pred shape {tuple(pred_b.shape)} differs from label shape {tuple(label_b.shape)}")
    if channel_first:
        if pred_b.ndim == 0 or pred_b.shape[0] != 1:
            raise ValueError(f"channel_first=True needs a leading dimension of size 1, got shape {pred_b.shape}")
        pred_b, label_b = pred_b[0], label_b[0]
    if pred_b.ndim not in (2, 3):
        raise ValueError(f"centerline_dice needs 2D or 3D masks, got shape {pred_b.shape}")

    pred_empty, label_empty = not pred_b.any(), not label_b.any()
    if pred_empty and label_empty:
        return 1.0
    if pred_empty or label_empty:
        return 0.0

    t_prec = _topology_fraction(skeletonize(pred_b), label_b)
    t_sens = _topology_fraction(skeletonize(label_b), pred_b)
    if t_prec + t_sens == 0.0:
        return 0.0
    return float(2.0 * t_prec * t_sens / (t_prec + t_sens))
