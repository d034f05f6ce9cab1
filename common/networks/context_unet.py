"""MONAI's UNet with a context module (e.g. a ReNet sweep) after its bottom layer, chosen from the configs."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet

__all__ = ["ContextUNet"]


class ContextUNet(UNet):
    """``monai.networks.nets.UNet`` whose bottleneck is followed by ``context``, at the coarsest resolution.

    Every argument of MONAI's UNet is accepted unchanged; ``context`` maps the bottom layer's output
    (``channels[-1]`` channels, at ``1 / prod(strides)`` of the input) to a map of the same shape, e.g.
    ``ReNet2d(channels[-1], hidden_size)`` so that the decoder sees global context. Without it the network is
    exactly MONAI's UNet (same layers, same state-dict keys).

    MONAI's UNet nests one ``SkipConnection`` per resolution level in its ``model``; the innermost one wraps the
    bottom layer, which is replaced here by ``nn.Sequential(bottom, context)`` once the UNet is built.
    """

    def __init__(self, *args: Any, context: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if context is not None:
            innermost = [m for m in self.model.modules() if isinstance(m, SkipConnection)][-1]
            innermost.submodule = nn.Sequential(innermost.submodule, context)
