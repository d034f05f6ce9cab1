"""The retinal bundle's field-of-view estimate: the largest bright region of the photograph, holes filled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import ROOT, load_module

fov = load_module(ROOT / "bundles" / "retinal_vessel_unet" / "scripts" / "fov.py", "retinal_fov")


def test_estimate_fov_keeps_the_largest_bright_region_with_its_holes_filled():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 < 20**2
    image = np.zeros((3, 64, 64), np.float32)
    image[0][disc] = 200.0
    image[0, 28:33, 28:33] = 0.0  # a dark spot inside the aperture (e.g. the fovea) is a hole, filled
    image[0, 58:63, 58:63] = 200.0  # a bright speck outside, bigger than the opening removes
    mask = fov.estimate_fov(image)
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert (mask == disc).all()


def test_estimate_fov_of_a_black_image_is_empty_and_refused_naming_the_file():
    assert not fov.estimate_fov(np.zeros((3, 16, 16), np.float32)).any()
    image = MetaTensor(torch.zeros(3, 16, 16), meta={"filename_or_obj": "/data/black.png"})
    with pytest.raises(ValueError, match=r"/data/black.png: the field of view covers 0.0% of the image"):
        fov.FieldOfViewd()({"image": image})
    image[0, 2:14, 2:14] = 90.0  # a visible aperture passes
    assert fov.FieldOfViewd()({"image": image})["mask"].sum() == 144
