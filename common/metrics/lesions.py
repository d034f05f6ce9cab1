"""Lesions as connected components: per-lesion measurements (volume, centroid, diameters) and lesion-wise detection.

A lesion is a connected component of a binary mask (26-connectivity in 3D, 8 in 2D, by default). Positions and
sizes are in world millimetres through the image's 4x4 voxel-to-world affine, so they do not depend on how the
volume is stored (orientation, flips, anisotropic voxels). The "axial" plane is the voxel plane most nearly
perpendicular to the patient's superior-inferior (world z) axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import regionprops

from common.metrics.binary import to_numpy_bool

__all__ = ["axial_axis", "label_components", "lesion_table", "mask_box", "match_lesions"]


def _affine(affine: Any, ndim: int) -> np.ndarray:
    """The 4x4 affine as float64, identity when None (voxel units)."""
    if affine is None:
        return np.eye(4)
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {matrix.shape}")
    return matrix


def _squeeze_channel(mask: np.ndarray) -> np.ndarray:
    """Drop the leading channel of size 1 of a channel-first 3D mask ``(1, X, Y, Z)``."""
    return mask[0] if mask.ndim == 4 and mask.shape[0] == 1 else mask


def mask_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel of ``mask``; None when none is."""
    box = []
    for axis in range(mask.ndim):
        found = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if found.size == 0:
            return None
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def label_components(mask: Any, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask: (labels 1..n, n). Full connectivity by default (26 in 3D, 8 in 2D).

    Labelled inside the mask's bounding box only: a liver or a few nodules in a whole-body CT are a small part of
    the volume, and the zeros around them cost nothing to allocate."""
    binary = _squeeze_channel(to_numpy_bool(mask))
    labels = np.zeros(binary.shape, dtype=np.int32)
    box = mask_box(binary)
    if box is None:
        return labels, 0
    structure = ndimage.generate_binary_structure(binary.ndim, connectivity or binary.ndim)
    labels[box], count = ndimage.label(binary[box], structure=structure)
    return labels, int(count)


def remove_small_components(mask: Any, affine: Any, min_volume_mm3: float) -> np.ndarray:
    """The binary mask without its connected components (full connectivity) smaller than ``min_volume_mm3``."""
    binary = _squeeze_channel(to_numpy_bool(mask))
    box = mask_box(binary)
    if box is None or min_volume_mm3 <= 0:
        return binary.copy()
    labels, count = label_components(binary[box])
    voxel_mm3 = abs(float(np.linalg.det(_affine(affine, 3)[:3, :3])))
    keep = np.bincount(labels.ravel(), minlength=count + 1) * voxel_mm3 >= min_volume_mm3
    keep[0] = False
    kept = np.zeros(binary.shape, dtype=bool)
    kept[box] = keep[labels]
    return kept


def axial_axis(affine: Any) -> int:
    """The voxel axis closest to the world superior-inferior axis: slices across it are axial."""
    matrix = _affine(affine, 3)
    directions = matrix[:3, :3] / np.maximum(voxel_sizes(matrix), 1e-12)
    return int(np.argmax(np.abs(directions[2])))


def _longest_in_plane(points_mm: np.ndarray) -> float:
    """Largest distance between two of the 2D points (the convex hull's diameter), 0 for a single point."""
    if len(points_mm) < 2:
        return 0.0
    candidates = points_mm
    if len(points_mm) > 3:
        try:
            candidates = points_mm[ConvexHull(points_mm).vertices]
        except (QhullError, ValueError):  # collinear points: every point is a candidate
            candidates = points_mm
    differences = candidates[:, None, :] - candidates[None, :, :]
    return float(np.sqrt((differences**2).sum(-1)).max())


def _axial_diameter(voxels: np.ndarray, matrix: np.ndarray, axis: int) -> float:
    """Longest diameter (mm) of a component within any one axial slice, voxel centres as the extent."""
    in_plane = [a for a in range(3) if a != axis]
    # in-plane mm distances: |C d| = |R d| for C = QR (the 3x2 in-plane columns of the affine), so R maps voxel
    # steps to 2D millimetre coordinates of the slice plane, obliquity and shear included
    _, to_plane_mm = np.linalg.qr(matrix[:3, in_plane])
    longest = 0.0
    for index in np.unique(voxels[:, axis]):
        points = voxels[voxels[:, axis] == index][:, in_plane].astype(np.float64) @ to_plane_mm.T
        longest = max(longest, _longest_in_plane(points))
    return longest


def lesion_table(
    mask: Any,
    affine: Any = None,
    image: Any = None,
    prob: Any = None,
    min_volume_mm3: float = 0.0,
    connectivity: int | None = None,
) -> list[dict[str, Any]]:
    """One row per lesion (connected component) of a 3D mask, largest first, those under ``min_volume_mm3`` dropped.

    Columns: ``lesion`` (1..n after dropping), ``voxels``, ``volume_mm3``, ``volume_ml``, ``centroid_x_mm``,
    ``centroid_y_mm``, ``centroid_z_mm`` (world coordinates of the affine), ``equivalent_diameter_mm`` (of the
    sphere of the same volume), ``longest_axial_diameter_mm`` (within one axial slice, between voxel centres: a
    lesion one voxel wide measures 0 along that direction, as a caliper on voxel centres would), and, when given,
    ``mean_intensity`` of ``image`` and ``mean_probability`` / ``max_probability`` of ``prob`` inside the lesion.
    """
    binary = _squeeze_channel(to_numpy_bool(mask))
    box = mask_box(binary)  # measured inside the lesions' bounding box: a whole CT's float copies cost gigabytes
    if box is None:
        return []
    offset = np.array([s.start for s in box])
    labels, _ = label_components(binary[box], connectivity)
    matrix = _affine(affine, labels.ndim)
    voxel_mm3 = abs(float(np.linalg.det(matrix[:3, :3])))
    axis = axial_axis(matrix)
    # image and prob as the channels of one intensity image, so regionprops gives their per-lesion mean and max
    channels = [_squeeze_channel(np.asarray(x))[box].astype(np.float64) for x in (image, prob) if x is not None]
    intensity = np.stack(channels, axis=-1) if channels else None
    rows = []
    for region in regionprops(labels, intensity_image=intensity):
        voxels = region.coords + offset
        volume = len(voxels) * voxel_mm3
        if volume < min_volume_mm3:
            continue
        centroid = matrix[:3, :3] @ (np.asarray(region.centroid) + offset) + matrix[:3, 3]
        row: dict[str, Any] = {
            "voxels": len(voxels),
            "volume_mm3": volume,
            "volume_ml": volume / 1000.0,
            "centroid_x_mm": float(centroid[0]),
            "centroid_y_mm": float(centroid[1]),
            "centroid_z_mm": float(centroid[2]),
            "equivalent_diameter_mm": (6.0 * volume / math.pi) ** (1.0 / 3.0),
            "longest_axial_diameter_mm": _axial_diameter(voxels, matrix, axis),
        }
        if image is not None:
            row["mean_intensity"] = float(region.intensity_mean[0])
        if prob is not None:
            row["mean_probability"] = float(region.intensity_mean[-1])
            row["max_probability"] = float(region.intensity_max[-1])
        rows.append(row)
    rows.sort(key=lambda r: -r["voxels"])
    return [{"lesion": i, **row} for i, row in enumerate(rows, start=1)]


def match_lesions(pred: Any, label: Any, connectivity: int | None = None) -> dict[str, Any]:
    """Lesion-wise detection: a true lesion is found when any predicted voxel overlaps it.

    Returns ``true_lesions``, ``pred_lesions``, ``detected`` (true lesions overlapped), ``sensitivity``
    (detected / true lesions, NaN without true lesions), ``false_positives`` (predicted components overlapping no
    true lesion), ``lesion_dice`` (mean over true lesions of the Dice between the lesion and the predicted
    components that overlap it; a missed lesion scores 0; NaN without true lesions) and ``per_lesion``: for each
    true lesion its ``voxels``, ``detected`` and ``dice``.
    """
    pred_labels, n_pred = label_components(pred, connectivity)
    true_labels, n_true = label_components(label, connectivity)
    if pred_labels.shape != true_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from label shape {true_labels.shape}")
    overlap = (pred_labels > 0) & (true_labels > 0)
    pairs = np.unique(np.stack([true_labels[overlap], pred_labels[overlap]]), axis=1)
    hit_by: dict[int, set[int]] = {}
    for t, p in pairs.T:
        hit_by.setdefault(int(t), set()).add(int(p))
    matched_pred = {p for ps in hit_by.values() for p in ps}
    per_lesion = []
    for t in range(1, n_true + 1):
        lesion = true_labels == t
        partners = hit_by.get(t, set())
        if partners:
            predicted = np.isin(pred_labels, list(partners))
            dice = 2.0 * np.count_nonzero(lesion & predicted) / (np.count_nonzero(lesion) + np.count_nonzero(predicted))
        else:
            dice = 0.0
        per_lesion.append({"lesion": t, "voxels": int(lesion.sum()), "detected": bool(partners), "dice": float(dice)})
    detected = sum(r["detected"] for r in per_lesion)
    return {
        "true_lesions": n_true,
        "pred_lesions": n_pred,
        "detected": detected,
        "sensitivity": detected / n_true if n_true else math.nan,
        "false_positives": n_pred - len(matched_pred),
        "lesion_dice": float(np.mean([r["dice"] for r in per_lesion])) if per_lesion else math.nan,
        "per_lesion": per_lesion,
    }
