"""Training crops of lesions: every lesion drawn equally often, whatever its size, and placed anywhere in the
window the network sees, not only at its centre."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, FgBgToIndicesd, RandCropByPosNegLabeld, RandSpatialCropd

from common.sampling import LesionBalancedIndicesd, lesion_balanced_indices
from conftest import ROOT


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


def lesion_offsets_in_training_crops(bundle: str, shape: tuple[int, int, int], crops: int = 48) -> tuple[list, list]:
    """The shipped ``train.json``'s crop sampling (``train#deterministic_transforms`` and ``train#random_transforms``
    up to the crop at ``roi_size``) applied to a volume with one lesion of label ``num_classes - 1``: the lesion's
    offset (voxels) from each crop's centre, for the crops that hold it, and the crops' shapes."""
    parser = ConfigParser()
    parser.read_config(ROOT / "bundles" / bundle / "configs" / "train.json")
    parser["crops_per_volume"] = crops
    steps = parser.get_parsed_content("train#deterministic_transforms")
    for transform in parser.get_parsed_content("train#random_transforms"):
        steps.append(transform)
        if isinstance(transform, RandSpatialCropd):
            break
    transform = Compose(steps)
    transform.set_random_state(0)
    label = np.zeros((1, *shape), np.uint8)
    centre = np.array(shape) // 2
    label[(0, *(slice(c - 2, c + 3) for c in centre))] = parser.get_parsed_content("num_classes") - 1
    image = MetaTensor(torch.rand(1, *shape), affine=torch.eye(4))
    out = transform({"image": image, "label": MetaTensor(torch.as_tensor(label), affine=torch.eye(4))})
    offsets, shapes = [], []
    for crop in out:
        shapes.append(tuple(crop["image"].shape[1:]))
        lesion = np.argwhere(np.asarray(crop["label"][0]) == label.max())
        if len(lesion):
            offsets.append(lesion.mean(axis=0) - (np.array(crop["label"].shape[1:]) - 1) / 2)
    return offsets, shapes


@pytest.mark.parametrize(
    "bundle, shape", [("lung_nodule_fcn3d", (120, 120, 100)), ("liver_ct_unet3d", (200, 200, 100))]
)
def test_training_crops_hold_a_lesion_anywhere_not_only_at_their_centre(bundle, shape):
    """Crops centred on lesion voxels taught the network that lesions lie at the centre of its window: a nodule
    12 voxels off-centre was not found, so sliding windows missed it. The sampled crop is larger and a random
    roi-sized window of it is kept, so the lesion's offset from the crop's centre spreads over the window."""
    roi = ConfigParser.load_config_file(ROOT / "bundles" / bundle / "configs" / "train.json")["roi_size"]
    offsets, shapes = lesion_offsets_in_training_crops(bundle, shape)
    assert set(shapes) == {tuple(roi)}
    assert len(offsets) >= 10  # the positive crops (lesion-centred sampling) still hold the lesion
    spread = np.abs(np.array(offsets)).max(axis=0)
    assert (spread >= np.array(roi) / 6).all(), spread  # a centred crop would have offsets within one voxel
