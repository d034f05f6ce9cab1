"""Network outputs brought back from the working grid to the grid of the input file, in slabs and only around what
the network found: the memory-bounded, faster replacement of ``Invertd`` (followed by an argmax) for large CT.

``Invertd`` undoes every preprocessing step in turn on the whole output: at 0.78 x 0.78 x 1.5 mm a 512 x 512 x 300
scan gets three float32 probability volumes of 0.3 GiB each plus a sampling grid of 0.9 GiB, and a 1000-slice scan
three times that. Here the output is sampled once, directly from the working grid through the two affines (any
orientation, spacing and crop in between), with the same trilinear interpolation, but

- only inside the box of working voxels the network gave to a foreground class, grown by one voxel (the support of
  trilinear interpolation): outside it every interpolated value is background, so nothing is lost; and
- in slabs of the input's last axis, so memory no longer grows with the number of slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


def input_grid(image: MetaTensor) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel-to-world affine and spatial shape of the file ``image`` was read from (MONAI's reader metadata)."""
    affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
    shape = tuple(int(s) for s in np.asarray(image.meta["spatial_shape"]).ravel())
    return affine, shape


def foreground_box(active: torch.Tensor, margin: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """First and last index (inclusive) per axis of the True voxels of ``active``, grown by ``margin`` voxels
    (unclipped); None when none is True."""
    found = torch.nonzero(active)
    if found.numel() == 0:
        return None
    return found.min(0).values.numpy() - margin, found.max(0).values.numpy() + margin


def box_in_grid(
    low: np.ndarray, high: np.ndarray, from_affine: np.ndarray, to_affine: np.ndarray, to_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The index box (start inclusive, stop exclusive) of a grid (``to_affine``, ``to_shape``) that covers the box
    ``low..high`` of another grid (``from_affine``); None when they do not overlap."""
    corners = np.array([[(low, high)[b][axis] for axis, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], float)
    to_index = np.linalg.inv(to_affine) @ from_affine
    mapped = corners @ to_index[:3, :3].T + to_index[:3, 3]
    start = np.maximum(np.floor(mapped.min(0)).astype(int), 0)
    stop = np.minimum(np.ceil(mapped.max(0)).astype(int) + 1, np.asarray(to_shape))
    return (start, stop) if np.all(stop > start) else None


def sample_slab(values: torch.Tensor, to_source: np.ndarray, start: np.ndarray, stop: np.ndarray) -> torch.Tensor:
    """Trilinear samples of channel-first ``values`` (C, X, Y, Z) at the voxels ``start..stop`` of another grid,
    given ``to_source`` (4 x 4: that grid's voxel indices to ``values``' voxel indices); zero outside ``values``."""
    size = np.asarray(values.shape[1:], dtype=np.float64)
    scale = np.where(size > 1, 2.0 / np.maximum(size - 1, 1), 0.0)  # index -> -1..1 (align_corners=True)
    matrix = to_source[:3] * scale[:, None]
    matrix[:, 3] -= np.where(size > 1, 1.0, 0.0)
    matrix = matrix[::-1]  # grid_sample reads its last dimension as (z, y, x): the source's axes reversed
    counts = [int(b - a) for a, b in zip(start, stop)]
    grid = torch.empty((1, *counts, 3), dtype=torch.float32)
    grid[...] = torch.as_tensor(matrix[:, 3].copy(), dtype=torch.float32)
    for axis in range(3):
        index = torch.arange(int(start[axis]), int(stop[axis]), dtype=torch.float32)
        shape = [1, 1, 1, 1, 1]
        shape[axis + 1] = -1
        grid += index.view(shape) * torch.as_tensor(matrix[:, axis].copy(), dtype=torch.float32)
    sampled = F.grid_sample(
        values.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return sampled[0]


def resample_to_input(
    values: torch.Tensor,
    working_affine: np.ndarray,
    input_affine: np.ndarray,
    input_shape: tuple[int, ...],
    argmax: bool = True,
    threshold: float = 0.5,
    slab: int = 32,
) -> torch.Tensor:
    """Channel-first ``values`` of the working grid resampled to the input grid: labels (1, X, Y, Z) uint8 by
    argmax over the channels (channel 0 background, which is also what lies outside the working grid, e.g. what
    a crop removed) when ``argmax``, else the channels as float32, zero where no channel exceeds ``threshold``
    anywhere nearby (and outside the working grid); ``slab`` input slices are sampled at a time."""
    values = torch.as_tensor(values).detach().cpu()
    active = values.max(0).indices > 0 if argmax else (values > threshold).any(0)
    shape = (1 if argmax else values.shape[0], *input_shape)
    result = torch.zeros(shape, dtype=torch.uint8 if argmax else torch.float32)
    found = foreground_box(active)
    box = None if found is None else box_in_grid(*found, working_affine, input_affine, input_shape)
    if box is None:
        return result
    start, stop = box
    to_source = np.linalg.inv(working_affine) @ input_affine
    if argmax:  # outside the working grid is background: sample values - e0, whose padding zeros mean e0
        values = values.float().clone()
        values[0] -= 1.0
    for first in range(int(start[2]), int(stop[2]), slab):
        last = min(first + slab, int(stop[2]))
        sampled = sample_slab(values, to_source, np.r_[start[:2], first], np.r_[stop[:2], last])
        target = result[:, start[0] : stop[0], start[1] : stop[1], first:last]
        if argmax:
            sampled[0] += 1.0
            target[...] = sampled.max(0, keepdim=True).indices.to(torch.uint8)
        else:
            target[...] = sampled
    return result


class ResampleToInputd(MapTransform):
    """Replace the working-grid class probabilities under ``keys`` by their values in the input file's grid
    (``resample_to_input``): labels when ``argmax``, else probabilities; the result carries the input's affine
    and the metadata of ``image_key``, so it is saved over the input exactly.

    Args:
        keys: channel-first probabilities (or logits, with ``argmax``) in the grid of ``image_key``.
        image_key: the preprocessed image: its affine is the working grid's, its metadata holds the input file's
            affine (``original_affine``) and shape (``spatial_shape``).
        argmax: labels by argmax over the channels (channel 0 background); else the channels themselves.
        threshold: without ``argmax``, the value a channel must exceed for a voxel to count as found.
        slab: input slices resampled at a time (memory: about 16 bytes per voxel of a slab and channel).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        argmax: bool = True,
        threshold: float = 0.5,
        slab: int = 32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.argmax, self.threshold, self.slab = image_key, argmax, threshold, slab

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        working = np.asarray(image.affine, dtype=np.float64)
        affine, shape = input_grid(image)
        for key in self.key_iterator(d):
            values = resample_to_input(d[key], working, affine, shape, self.argmax, self.threshold, self.slab)
            meta = {k: v for k, v in image.meta.items() if k not in ("affine", "spatial_shape")}
            d[key] = MetaTensor(values, affine=torch.as_tensor(affine), meta={**meta, "spatial_shape": shape})
        return d
