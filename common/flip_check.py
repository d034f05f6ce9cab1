"""A quality signal from test-time flipping: run the network once more on the input flipped along some spatial axes,
flip its class probabilities back, and measure how much of the predicted foreground changes label. A network that
learned the flip from its training augmentation should give nearly the same labels; a large disagreement marks a case
whose segmentation is unstable and worth a look. ``FlipAgreementd`` stores the value next to the signals of
``common.review.QualitySignalsd`` in the case's ``quality`` dict.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor


def flip_disagreement(pred: torch.Tensor, flipped: torch.Tensor) -> float:
    """Share of the union of foreground voxels (argmax > 0 in either) where the labels of two channel-first class
    probabilities differ: 0.0 when they agree, 1.0 when no foreground voxel agrees, NaN when neither has foreground."""
    first, second = convert_to_tensor(pred, track_meta=False), convert_to_tensor(flipped, track_meta=False)
    if first.shape != second.shape:
        raise ValueError(f"the two probabilities must have the same shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    if first.ndim < 2 or first.shape[0] < 2:
        raise ValueError(f"flip disagreement needs channel-first probabilities of at least 2 classes, got shape "
                         f"{tuple(first.shape)}")
    labels = first.argmax(dim=0)
    other = second.to(first.device).argmax(dim=0)
    union = (labels > 0) | (other > 0)
    count = int(union.sum())
    if count == 0:
        return math.nan
    return int((labels != other)[union].sum()) / count


class FlipAgreementd(MapTransform):
    """Store ``flip_disagreement`` between the class probabilities under ``keys`` and those of the network on the
    image flipped along ``spatial_axes`` (flipped back) as ``d[output_key]["flip_disagreement"]``; the other entries
    of that dict are kept and the probabilities are not changed.

    Meant for the post-processing of a ``SupervisedEvaluator``, right after the softmax: it sees one decollated case,
    with the network's input under ``image_key`` and the probabilities in the same working grid. It costs one more
    forward pass per case (about doubling the network time), and it only makes sense along axes that the bundle's
    training augmentation flips: along other axes a good network may disagree with itself.

    Args:
        keys: key of the class probabilities (C channels, after the softmax); one key.
        image_key: key of the network's input, channel-first, without batch dimension.
        network: the network, already in eval mode (the evaluator sets it; its mode is not changed here).
        inferer: called as ``inferer(inputs, network)`` on a batch of 1, returning logits (the first of a tuple or
            list with deep supervision).
        spatial_axes: spatial axes of the working grid to flip, 0 being the first spatial axis.
        output_key: key of the quality signals' dict.
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        network: torch.nn.Module | None = None,
        inferer: Inferer | None = None,
        spatial_axes: Sequence[int] = (0,),
        output_key: str = "quality",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if network is None or inferer is None:
            raise ValueError("FlipAgreementd needs a network and an inferer")
        axes = tuple(int(axis) for axis in spatial_axes)
        if not axes:
            raise ValueError("spatial_axes is empty: give a spatial axis that the bundle's training augmentation flips "
                             "(a bundle trained without flips has none, and no flip check)")
        if len(set(axes)) != len(axes):
            raise ValueError(f"spatial_axes {axes} names an axis more than once (a double flip is no flip)")
        self.image_key = image_key
        self.network = network
        self.inferer = inferer
        self.spatial_axes = axes
        self.output_key = output_key

    def _device(self, image: torch.Tensor) -> torch.device:
        """The device of the network's parameters (the image's when it has none)."""
        parameter = next(self.network.parameters(), None)
        return image.device if parameter is None else parameter.device

    def flipped_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the network on ``image`` flipped along the spatial axes, flipped back."""
        values = convert_to_tensor(image, track_meta=False)
        spatial = values.ndim - 1
        bad = [axis for axis in self.spatial_axes if not 0 <= axis < spatial]
        if bad:
            raise ValueError(f"spatial_axes {self.spatial_axes} has axes {bad} out of range for an image of "
                             f"{spatial} spatial dim(s) (shape {tuple(values.shape)})")
        dims = [axis + 1 for axis in self.spatial_axes]  # after the channel
        with torch.no_grad():
            inputs = torch.flip(values, dims).unsqueeze(0).to(self._device(values))
            logits = self.inferer(inputs, self.network)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            prob = torch.softmax(convert_to_tensor(logits, track_meta=False).float(), dim=1)[0]
            return torch.flip(prob, dims)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            back = self.flipped_probabilities(d[self.image_key])
            with torch.no_grad():
                value = flip_disagreement(d[key], back)
            existing = d.get(self.output_key)
            quality = dict(existing) if existing is not None else {}
            quality["flip_disagreement"] = value
            d[self.output_key] = quality
        return d
