"""Crop centres that give every lesion the same chance, whatever its size."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.metrics.lesions import label_components

__all__ = ["lesion_balanced_indices", "LesionBalancedIndicesd"]


def lesion_balanced_indices(label: Any, per_lesion: int = 64) -> np.ndarray:
    """Flat voxel indices of the foreground, ``per_lesion`` from each connected component (spread over its voxels).

    ``RandCropByPosNegLabeld`` draws its positive centres uniformly from the foreground indices it is given. From
    all foreground voxels (``FgBgToIndicesd``) a 30 mm nodule, about 3,400 voxels at 2 mm, is drawn 400 times as
    often as a 4 mm one of 8 voxels, so the small lesions that are hardest to find are almost never trained on.
    Here each component contributes exactly ``per_lesion`` indices (its voxels evenly strided, repeated when it
    has fewer), so a positive crop is centred on every lesion equally often, and anywhere within it.
    """
    labels, count = label_components(np.asarray(label) > 0)
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(1, count + 2))
    picks = []
    for first, end in zip(starts[:-1], starts[1:]):
        size = end - first
        picks.append(order[first + np.arange(per_lesion) * size // per_lesion])
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


class LesionBalancedIndicesd(MapTransform):
    """Write ``<key><postfix>`` (default ``label_fg``): foreground indices balanced over the label's lesions.

    Use after ``FgBgToIndicesd`` (which still gives the background indices) and before ``RandCropByPosNegLabeld``
    with ``fg_indices_key`` set to the same name; deterministic, so it belongs in the cached preprocessing.
    """

    def __init__(
        self, keys: KeysCollection, per_lesion: int = 64, postfix: str = "_fg", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.per_lesion = per_lesion
        self.postfix = postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            values = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
            d[f"{key}{self.postfix}"] = lesion_balanced_indices(values[0], self.per_lesion)
        return d
