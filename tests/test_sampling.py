"""Lesion-balanced crop centres: every lesion drawn equally often, whatever its size."""

from __future__ import annotations

import collections

import numpy as np
import torch
from monai.transforms import Compose, FgBgToIndicesd, RandCropByPosNegLabeld

from common.sampling import LesionBalancedIndicesd, lesion_balanced_indices


def three_lesions() -> np.ndarray:
    """A 40^3 label: a 20^3 cube (8,000 voxels), a 2-voxel lesion and a single voxel, apart."""
    label = np.zeros((40, 40, 40), np.uint8)
    label[2:22, 2:22, 2:22] = 1
    label[30:32, 5, 5] = 1
    label[35, 35, 35] = 1
    return label


def test_each_lesion_gets_the_same_number_of_indices_inside_it():
    label = three_lesions()
    indices = lesion_balanced_indices(label, per_lesion=10)
    assert indices.shape == (30,)
    coords = np.stack(np.unravel_index(indices, label.shape), axis=1)
    assert label.ravel()[indices].all()
    in_cube = (coords < 22).all(axis=1) & (coords >= 2).all(axis=1)
    assert in_cube.sum() == 10
    assert (indices == np.ravel_multi_index((35, 35, 35), label.shape)).sum() == 10  # repeated
    assert len(np.unique(indices[in_cube])) == 10  # spread over the cube, not one voxel


def test_no_lesion_gives_no_indices():
    assert lesion_balanced_indices(np.zeros((5, 6, 7)), 8).size == 0


def test_crops_are_centred_on_each_lesion_about_equally_often():
    """Through MONAI's RandCropByPosNegLabeld, as the lung bundle uses it: from all foreground voxels the cube
    would take 99.96 % of the positive crops; balanced, each lesion takes about a third."""
    transform = Compose([
        FgBgToIndicesd("label", fg_postfix="_fg", bg_postfix="_bg"),
        LesionBalancedIndicesd("label", per_lesion=16),
        RandCropByPosNegLabeld(["image", "label"], "label", (8, 8, 8), pos=1, neg=0, num_samples=600,
                               fg_indices_key="label_fg", bg_indices_key="label_bg"),
    ])  # fmt: skip
    transform.set_random_state(0)
    crops = transform({"image": torch.rand(1, 40, 40, 40), "label": torch.as_tensor(three_lesions()[None])})
    sizes = collections.Counter(min(int(c["label"].sum()), 3) for c in crops)  # 1, 2, or the cube (>= 3)
    for lesion in (1, 2, 3):
        assert 150 < sizes[lesion] < 250, sizes
