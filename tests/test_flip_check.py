"""The flip-agreement quality signal: disagreement of two label maps, and the transform that runs the flipped pass."""

from __future__ import annotations

import json
import math

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SlidingWindowInferer

from common.errors import one_line
from common.flip_check import FlipAgreementd, flip_disagreement
from conftest import BUNDLE_NAMES, ROOT


def one_hot(labels: list, classes: int = 2) -> torch.Tensor:
    """Channel-first probabilities (0.9 on the label, the rest shared) of a nested list of labels."""
    index = torch.tensor(labels)
    prob = torch.nn.functional.one_hot(index, classes).movedim(-1, 0).float()
    return prob * (0.9 - 0.1 / (classes - 1)) + 0.1 / (classes - 1)


def pointwise(dims: int) -> torch.nn.Module:
    """A 1x1 convolution (exactly flip-equivariant): class 1 where the image is negative."""
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, *([1] * dims)))
        conv.bias.zero_()
    return conv.eval()


class Ramp(torch.nn.Module):
    """Logits that depend on the row, not only on the image: class 1 from row 1 on (``row - 0.5 > 0``)."""

    def __init__(self, deep_supervision: bool = False):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        rows = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1).expand_as(x)
        logits = torch.cat([torch.zeros_like(x), self.scale * (rows - 0.5) + 0.0 * x], dim=1)
        return [logits, -logits] if self.deep_supervision else logits


def probabilities(network: torch.nn.Module, inferer, image: torch.Tensor) -> torch.Tensor:
    """What the evaluator hands the post-processing: softmax of the network on the unflipped image."""
    with torch.no_grad():
        logits = inferer(image.unsqueeze(0), network)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return torch.softmax(logits, dim=1)[0]


def test_identical_probabilities_agree():
    prob = one_hot([[0, 1, 1], [2, 0, 1]], classes=3)
    assert flip_disagreement(prob, prob.clone()) == 0.0


def test_disjoint_foregrounds_disagree_fully():
    assert flip_disagreement(one_hot([[1, 1], [0, 0]]), one_hot([[0, 0], [1, 1]])) == 1.0


def test_one_of_four_union_voxels_differs():
    # union foreground: 4 voxels (the 4 of the second map); only the last differs (0 against 1)
    assert flip_disagreement(one_hot([[1, 1, 0], [1, 0, 0]]), one_hot([[1, 1, 0], [1, 1, 0]])) == 0.25
    # a foreground label against another foreground label counts as well
    three = flip_disagreement(one_hot([[1, 1], [2, 1]], classes=3), one_hot([[1, 1], [1, 1]], classes=3))
    assert three == 0.25


def test_no_foreground_is_nan():
    assert math.isnan(flip_disagreement(one_hot([[0, 0], [0, 0]]), one_hot([[0, 0], [0, 0]])))


def test_metatensor_and_bad_shapes():
    prob = one_hot([[1, 0], [0, 0]])
    assert flip_disagreement(MetaTensor(prob), MetaTensor(one_hot([[0, 0], [0, 1]]))) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        flip_disagreement(prob, one_hot([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        flip_disagreement(prob[:1], prob[:1])


def test_equivariant_network_agrees_and_keeps_quality_entries():
    torch.manual_seed(0)
    network, inferer = pointwise(2), SimpleInferer()
    image = MetaTensor(torch.randn(1, 6, 5))
    pred = probabilities(network, inferer, image)
    assert 0 < int((pred.argmax(0) > 0).sum()) < 30  # some foreground, not all
    shared = {"mean_entropy": 0.3}
    transform = FlipAgreementd(network=network, inferer=inferer, spatial_axes=(0, 1))
    out = transform({"image": image, "pred": pred, "quality": shared})
    assert out["quality"] == {"mean_entropy": 0.3, "flip_disagreement": 0.0}
    assert shared == {"mean_entropy": 0.3}  # copied, not mutated
    assert out["pred"] is pred
    assert not network.training


def test_position_dependent_network_disagrees():
    network, inferer = Ramp().eval(), SimpleInferer()
    image = torch.rand(1, 4, 3)
    pred = probabilities(network, inferer, image)
    before = pred.clone()
    out = FlipAgreementd(network=network, inferer=inferer)({"image": image, "pred": pred})
    # foreground rows 1..3 unflipped, rows 0..2 flipped back: union of 4 rows, rows 0 and 3 differ
    assert out["quality"] == {"flip_disagreement": 0.5}
    assert torch.equal(out["pred"], before)
    # along the columns the ramp is constant: no disagreement
    columns = FlipAgreementd(network=network, inferer=inferer, spatial_axes=[1])({"image": image, "pred": pred})
    assert columns["quality"]["flip_disagreement"] == 0.0


def test_deep_supervision_uses_first_output():
    network, inferer = Ramp(deep_supervision=True).eval(), SimpleInferer()
    image = torch.rand(1, 4, 3)
    pred = probabilities(network, inferer, image)
    out = FlipAgreementd(network=network, inferer=inferer, output_key="signals")({"image": image, "pred": pred})
    assert out["signals"]["flip_disagreement"] == 0.5


def test_sliding_window_3d_agrees():
    torch.manual_seed(1)
    network, inferer = pointwise(3), SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2)
    image = torch.randn(1, 10, 9, 12)
    pred = probabilities(network, inferer, image)
    assert (pred.argmax(0) > 0).any()
    out = FlipAgreementd(network=network, inferer=inferer, spatial_axes=(0, 2))({"image": image, "pred": pred})
    assert out["quality"]["flip_disagreement"] == 0.0


def test_bad_axes_raise():
    network, inferer = pointwise(2), SimpleInferer()
    with pytest.raises(ValueError, match="spatial_axes"):
        FlipAgreementd(network=network, inferer=inferer, spatial_axes=())
    with pytest.raises(ValueError, match="spatial_axes"):
        FlipAgreementd(network=network, inferer=inferer, spatial_axes=(1, 1))
    image = torch.randn(1, 4, 4)
    transform = FlipAgreementd(network=network, inferer=inferer, spatial_axes=(3,))
    with pytest.raises(ValueError, match="spatial_axes"):
        transform({"image": image, "pred": probabilities(network, inferer, image)})
    with pytest.raises(ValueError, match="spatial_axes"):
        FlipAgreementd(network=network, inferer=inferer, spatial_axes=(-1,))({"image": image, "pred": image})


def _flip_axes_of_training(train: dict) -> set[int]:
    """The spatial axes that the ``RandFlipd`` transforms of a train.json flip."""
    found: set[int] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("_target_") == "RandFlipd":
                axis = node["spatial_axis"]
                found.update(axis if isinstance(axis, list) else [axis])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(train)
    return found


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_the_flip_check_is_off_by_default_and_flips_only_what_training_flips(name):
    bundle = ROOT / "bundles" / name
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["flip_check"] is False
    transforms = config["postprocessing"]["transforms"]
    targets = [t["_target_"] for t in transforms]
    index = targets.index("common.flip_check.FlipAgreementd")
    assert targets[index - 1] == "common.review.QualitySignalsd"  # on the probabilities, in the working grid
    trained = _flip_axes_of_training(json.loads((bundle / "configs" / "train.json").read_text()))
    assert set(transforms[index]["spatial_axes"]) <= trained
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "flip_check": True, "device": "cpu"})
    assert ("max_flip_disagreement" in config["review_rules"]) == bool(trained)
    if not trained:  # a network trained without flips has no axis to check: the run stops, saying why
        with pytest.raises(RuntimeError) as refused:  # MONAI wraps the transform's ValueError
            parser.get_parsed_content(f"postprocessing#transforms#{index}")
        assert "trained without flips" in one_line(refused.value)  # the line report_errors prints
    else:
        check = parser.get_parsed_content(f"postprocessing#transforms#{index}")
        assert isinstance(check, FlipAgreementd) and check.spatial_axes == tuple(transforms[index]["spatial_axes"])
