"""``common.inversion``: the output resampled to the input grid in slabs, around what was found, gives what
``Invertd`` gives on the whole volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Invertd

import synthetic.liver as liver
from common.inversion import ResampleToInputd, box_in_grid, resample_to_input
from common.transforms import ArgMaxd
from conftest import ROOT


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> list[tuple[dict, object]]:
    """Two CTs (one RAS, one LPS, 1.2 x 1.2 x 2 mm) through the liver bundle's inference preprocessing."""
    folder = tmp_path_factory.mktemp("ct")
    paths = liver.write_inputs(folder, 2, seed=5, size=96, num_slices=40, spacing=[1.2, 1.2, 2.0])
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "liver_ct_unet3d" / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing")
    return [(preprocessing({"image": str(path)}), preprocessing) for path in sorted(paths)]


def smooth_probabilities(image: MetaTensor, classes: int = 3, seed: int = 0) -> MetaTensor:
    """Smooth random class probabilities over the working grid of ``image``, foreground confined to a ball."""
    generator = torch.Generator().manual_seed(seed)
    shape = image.shape[1:]
    coarse = torch.randn(1, classes, *[max(2, s // 6) for s in shape], generator=generator) * 4
    logits = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")[0]
    axes = [torch.linspace(0, 1, s) for s in shape]
    distance = sum((a.view([-1 if i == j else 1 for j in range(3)]) - 0.5) ** 2 for i, a in enumerate(axes))
    logits[0] += torch.where(distance > 0.06, 30.0, 1.0)
    return MetaTensor(torch.softmax(logits, 0), affine=image.affine, meta=dict(image.meta))


def test_labels_and_affine_match_invertd(preprocessed):
    """Same labels as ``Invertd`` then argmax at (almost) every voxel, same affine and shape, for both orientations."""
    for data, preprocessing in preprocessed:
        pred = smooth_probabilities(data["image"])
        inverted = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)
        expected = ArgMaxd("pred")(inverted(dict(data, pred=pred.clone())))["pred"]
        got = ResampleToInputd("pred", slab=7)(dict(data, pred=pred.clone()))["pred"]
        assert got.dtype == torch.uint8 and got.shape == expected.shape
        assert 0.005 < float((expected > 0).float().mean()) < 0.5  # something found, not everywhere
        assert float((got.as_tensor() != expected.as_tensor().to(torch.uint8)).float().mean()) < 1e-5
        np.testing.assert_allclose(np.asarray(got.affine), np.asarray(expected.affine), atol=1e-4)
        assert got.meta["filename_or_obj"] == data["image"].meta["filename_or_obj"]


def test_probabilities_match_invertd_where_found(preprocessed):
    """Without argmax the foreground channel matches ``Invertd`` wherever either exceeds the threshold."""
    data, preprocessing = preprocessed[1]
    pred = smooth_probabilities(data["image"], seed=1)[1:]
    pred = MetaTensor(pred, affine=data["image"].affine, meta=dict(data["image"].meta))
    inverted = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)
    expected = inverted(dict(data, pred=pred.clone()))["pred"].as_tensor()
    got = ResampleToInputd("pred", argmax=False, threshold=0.5)(dict(data, pred=pred.clone()))["pred"].as_tensor()
    found = (expected > 0.5) | (got > 0.5)
    assert found.any() and torch.equal(expected > 0.5, got > 0.5)
    torch.testing.assert_close(got[found], expected[found], atol=1e-4, rtol=0)


def test_slabs_and_nothing_found():
    """The slab size does not change the result; with no foreground the labels are all background."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    target = np.diag([-0.7, 0.8, 1.1, 1.0])
    target[:3, 3] = [40.0, -3.0, 2.0]
    values = torch.zeros(3, 20, 18, 12)
    values[0] = 1.0
    values[:, 6:11, 5:9, 3:8] = torch.tensor([0.1, 0.7, 0.2]).view(3, 1, 1, 1)
    values[2, 8, 6, 5], values[1, 8, 6, 5] = 0.8, 0.1
    one = resample_to_input(values, affine, target, (60, 50, 40), slab=1)
    many = resample_to_input(values, affine, target, (60, 50, 40), slab=100)
    assert torch.equal(one, many) and set(torch.unique(one).tolist()) == {0, 1, 2}
    background = torch.zeros(3, 20, 18, 12)
    background[0] = 1.0
    assert not resample_to_input(background, affine, target, (60, 50, 40)).any()


def test_box_maps_through_both_affines():
    """A box of one grid covers the right voxels of a flipped, finer grid; disjoint grids give None."""
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = np.diag([-1.0, 1.0, 1.0, 1.0])
    fine[0, 3] = 19.0  # voxel i of the fine grid is at x = 19 - i
    start, stop = box_in_grid(np.array([1, 1, 1]), np.array([2, 2, 2]), coarse, fine, (20, 20, 20))
    assert start.tolist() == [15, 2, 2] and stop.tolist() == [18, 5, 5]
    far = np.eye(4)
    far[:3, 3] = 500.0
    assert box_in_grid(np.array([1, 1, 1]), np.array([2, 2, 2]), coarse, far, (20, 20, 20)) is None
