"""The retinal field of view (FOV): read from a mask file when given, otherwise estimated from the photograph."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage

from common.transforms import source_name


def estimate_fov(image: np.ndarray | torch.Tensor, threshold: float = 0.1) -> np.ndarray:
    """Estimate the FOV of a channel-first RGB fundus photograph: the largest bright region, holes filled.

    The camera leaves the outside of the circular aperture near black, so the red channel (the brightest in a
    fundus photograph) above ``threshold`` times its 99th percentile separates the FOV; opening removes specks.
    """
    red = np.asarray(image[0], dtype=np.float32)
    level = threshold * max(float(np.percentile(red, 99)), 1e-6)
    inside = ndimage.binary_opening(red > level, structure=np.ones((3, 3), bool))
    if not inside.any():
        return inside  # nothing visible: an empty field of view, refused by ``FieldOfViewd``
    return ndimage.binary_fill_holes(get_largest_connected_component_mask(inside, connectivity=1))


class FieldOfViewd(MapTransform):
    """Put a binary single-channel FOV under ``mask_key``: the loaded mask binarised, or one estimated from the image.

    A photograph whose field of view covers less than ``min_fraction`` of it (black, or nearly so: a failed
    capture, a lens cap, a wrongly exported file) is refused naming the file: measuring vessels in it would report
    numbers about nothing.

    Args:
        mask_key: key of the FOV mask (present when the data list gives a mask file).
        image_key: key of the channel-first RGB photograph used to estimate a missing mask.
        min_fraction: the smallest share of the image the field of view may cover.
    """

    def __init__(self, mask_key: str = "mask", image_key: str = "image", min_fraction: float = 0.05) -> None:
        super().__init__(keys=[mask_key], allow_missing_keys=True)
        self.mask_key = mask_key
        self.image_key = image_key
        self.min_fraction = min_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        if self.mask_key in d:
            mask = d[self.mask_key][:1] > 0
        else:
            mask = torch.as_tensor(estimate_fov(image)[None])
        share = float(torch.as_tensor(mask, dtype=torch.float32).mean())
        if share < self.min_fraction:
            source = "the given mask" if self.mask_key in d else "no bright region in the photograph"
            raise ValueError(
                f"{source_name(d, self.image_key)}: the field of view covers {share:.1%} of the image ({source}), "
                f"less than {self.min_fraction:.0%}: the photograph is dark or blank; check the file (or its mask)."
            )
        meta = dict(image.meta) if isinstance(image, MetaTensor) else {}
        d[self.mask_key] = MetaTensor(torch.as_tensor(mask, dtype=torch.float32), meta=meta)
        return d
