"""MONAI's UNet with a context module (e.g. a ReNet sweep) after its bottom layer, chosen from the configs."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from monai.networks.nets import UNet

__all__ = ["ContextUNet"]


class ContextUNet(UNet):
    """``monai.networks.nets.UNet`` whose bottleneck is followed by ``context``, at the coarsest resolution.

    Every argument of MONAI's UNet is accepted unchanged; ``context`` maps the bottom layer's output
    (``channels[-1]`` channels, at ``1 / prod(strides)`` of the input) to a map of the same shape, e.g.
    ``ReNet2d(channels[-1], hidden_size)`` so that the decoder sees global context. Without it the network is
    exactly MONAI's UNet (same layers, same state-dict keys).
    """

    def __init__(self, *args: Any, context: nn.Module | None = None, **kwargs: Any) -> None:
        object.__setattr__(self, "_pending_context", context)  # read by _get_bottom_layer during UNet.__init__
        try:
            super().__init__(*args, **kwargs)
        finally:
            object.__delattr__(self, "_pending_context")

    def _get_bottom_layer(self, in_channels: int, out_channels: int) -> nn.Module:
        bottom = super()._get_bottom_layer(in_channels, out_channels)
        context = self.__dict__.get("_pending_context")
        return bottom if context is None else nn.Sequential(bottom, context)
