"""The lung fields of a chest CT, from Hounsfield units and connected components, and the rule that a reported
nodule lies in them: a finding in the abdomen, the chest wall or outside the body is not a lung nodule."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from common.metrics.lesions import label_components
from common.transforms import source_name

logger = logging.getLogger(__name__)

#: air and lung parenchyma are below this (HU); soft tissue, vessels and nodules above
AIR_HU = -400.0


def lung_fields(hu: np.ndarray, min_voxels: int = 1) -> np.ndarray:
    """Lung fields of a CT volume in HU, voxel axes (x, y, axial): the air that is not connected to the volume's
    in-plane border (the air around the body is), in components of at least ``min_voxels``, with the holes that
    vessels and nodules leave filled slice by slice."""
    air = hu < AIR_HU
    labels, count = ndimage.label(air)  # 6-connectivity: air does not leak through a thin body wall
    if not count:
        return air
    faces = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    outside = np.unique(np.concatenate([face.ravel() for face in faces]))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[outside] = False
    keep[0] = False
    in_plane = ndimage.generate_binary_structure(2, 1)[:, :, None]  # no link across slices: holes per slice
    return ndimage.binary_fill_holes(keep[labels], structure=in_plane)


def grow(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean distance in mm, voxels of ``spacing``)."""
    if margin_mm <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm


def near(mask: np.ndarray, index: np.ndarray, spacing: Sequence[float], margin_mm: float) -> bool:
    """Whether a voxel of ``mask`` lies within ``margin_mm`` (Euclidean, voxels of ``spacing``) of any of the voxels
    at ``index`` (N x 3, inside the grid): ``grow(mask, spacing, margin_mm)`` read there, but computed only in the
    box of those voxels grown by the margin (a mask voxel any farther cannot be within it)."""
    if len(index) == 0:
        return False
    spacing = np.asarray(spacing, dtype=float)
    reach = np.ceil(max(margin_mm, 0.0) / spacing).astype(int)
    low = np.maximum(index.min(axis=0) - reach, 0)
    high = np.minimum(index.max(axis=0) + reach + 1, mask.shape)
    fields = mask[tuple(slice(a, b) for a, b in zip(low, high))]
    local = tuple((index - low).T)
    if not fields.any():
        return False
    if margin_mm <= 0:
        return bool(fields[local].any())
    return bool((ndimage.distance_transform_edt(~fields, sampling=spacing)[local] <= margin_mm).any())


class LungFieldsd(MapTransform):
    """Put the lung fields of the windowed CT under ``image_key`` into ``output_key``, in the image's (working) grid
    and with its affine, ``margin_mm`` in its metadata: ``KeepInsideLungsd`` looks them up from any other grid
    through the two affines, so the mask is never resampled to the input's (possibly 512 x 512 x 1000) grid, and
    grows them by the margin only around the nodules it checks.

    Args:
        image_key: the preprocessed CT (RAS, ``spacing``, intensities windowed from ``hu_window`` to 0..1).
        output_key: key of the lung-field mask.
        hu_window: the Hounsfield window mapped to 0..1 by the preprocessing.
        margin_mm: how far beyond the aerated lung the fields reach (juxtapleural nodules, partial volume).
        min_ml: air pockets smaller than this (bowel gas, a tube) are not lung.
    """

    def __init__(
        self,
        image_key: str = "image",
        output_key: str = "lungs",
        hu_window: Sequence[float] = (-1000.0, 400.0),
        margin_mm: float = 10.0,
        min_ml: float = 20.0,
    ) -> None:
        super().__init__(keys=[image_key])
        self.image_key, self.output_key = image_key, output_key
        self.low, self.high = float(hu_window[0]), float(hu_window[1])
        self.margin_mm, self.min_ml = margin_mm, min_ml

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        spacing = np.asarray(image.pixdim, dtype=float)[:3]
        hu = self.low + np.asarray(image[0].detach().cpu(), dtype=np.float32) * (self.high - self.low)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        lungs = lung_fields(hu, min_voxels=int(np.ceil(self.min_ml / voxel_ml)))
        d[self.output_key] = MetaTensor(
            torch.as_tensor(lungs[None]), affine=image.affine.clone(), meta={"margin_mm": self.margin_mm}
        )
        return d


def mask_index(mask_affine: np.ndarray, shape: Sequence[int], voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Indices, in a grid of ``shape`` with voxel-to-world ``mask_affine``, of the voxels nearest to the world
    positions of ``voxels`` (N x 3 indices of a grid with ``affine``); -1 in every axis for those outside it."""
    world = np.c_[voxels, np.ones(len(voxels))] @ np.asarray(affine, dtype=float).T
    index = np.rint((world @ np.linalg.inv(np.asarray(mask_affine, dtype=float)).T)[:, :3]).astype(int)
    index[~np.all((index >= 0) & (index < np.array(shape)), axis=1)] = -1
    return index


class KeepInsideLungsd(MapTransform):
    """Remove the nodule components of ``keys`` that do not touch the lung fields under ``lungs_key`` (any grid:
    looked up in world coordinates through both affines; the mask is dropped from the data once used).

    When no lung field was found (not a chest CT, or lungs cut by the field of view), nothing is removed and a
    warning names the file: the nodules are then reported as found, not silently dropped.
    """

    def __init__(self, keys: KeysCollection, lungs_key: str = "lungs", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lungs_key = lungs_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        lungs = d.pop(self.lungs_key)
        mask, mask_affine = np.asarray(lungs[0].detach().cpu()) > 0.5, np.asarray(lungs.affine, dtype=float)
        spacing, margin_mm = np.asarray(lungs.pixdim, dtype=float)[:3], float(lungs.meta.get("margin_mm", 0.0))
        for key in self.key_iterator(d):
            pred = d[key]
            if not mask.any():
                logger.warning("%s: no lung fields found; nodules are not checked against them", source_name(d, key))
                continue
            labels, count = label_components(np.asarray(pred[0].detach().cpu()) > 0.5)
            voxels = np.argwhere(labels > 0)
            index = mask_index(mask_affine, mask.shape, voxels, np.asarray(pred.affine, dtype=float))
            component = np.where(index[:, 0] >= 0, labels[tuple(voxels.T)], 0)
            outside = [n for n in range(1, count + 1) if not near(mask, index[component == n], spacing, margin_mm)]
            if outside:
                d[key] = pred.clone()
                d[key][0][torch.as_tensor(np.isin(labels, outside))] = 0
        return d
