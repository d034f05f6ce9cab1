"""A fully convolutional network in the FCN-8s style (Long, Shelhamer, Darrell, CVPR 2015), 2D or 3D."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv, Pool

__all__ = ["FCN"]


def _linear_kernel(size: int, spatial_dims: int) -> torch.Tensor:
    """Separable (bi/tri)linear interpolation kernel of side ``size``, as used to initialise a transposed conv."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    tent = 1 - np.abs(np.arange(size) - center) / factor
    kernel = tent
    for _ in range(spatial_dims - 1):
        kernel = np.multiply.outer(kernel, tent)
    return torch.as_tensor(kernel, dtype=torch.float32)


class _Upsample(nn.Module):
    """Upsampling of class scores by an integer ``scale``: a transposed conv initialised to linear
    interpolation (``mode="deconv"``, learnable) or fixed linear interpolation (``mode="linear"``)."""

    def __init__(self, spatial_dims: int, channels: int, scale: int, mode: str = "deconv") -> None:
        super().__init__()
        if mode == "deconv":
            conv = Conv[Conv.CONVTRANS, spatial_dims](
                channels, channels, kernel_size=2 * scale, stride=scale, padding=scale // 2, bias=False
            )
            with torch.no_grad():
                conv.weight.zero_()
                kernel = _linear_kernel(2 * scale, spatial_dims)
                for c in range(channels):
                    conv.weight[c, c] = kernel
            self.up: nn.Module = conv
        elif mode == "linear":
            self.up = UpSample(spatial_dims, scale_factor=scale, mode="nontrainable", interp_mode="linear",
                               align_corners=False)  # fmt: skip
        else:
            raise ValueError(f"upsample must be 'deconv' or 'linear', got {mode!r}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class FCN(nn.Module):
    """FCN-8s: a VGG-like encoder, class scores at the three deepest resolutions fused while upsampling.

    The encoder has ``len(features)`` stages, each ``convs_per_stage`` 3x3 conv-norm-act blocks followed by a
    stride-2 max-pool, so stage ``k`` ends at 1/2^(k+1) of the input resolution (pool1 .. pool5 with the default
    five stages). A head of two conv blocks (3x3 in place of FCN's 7x7 "fc6", then 1x1 "fc7") with dropout and
    without normalisation (the deepest map can be a single voxel) runs on the deepest features, an optional
    ``context`` module follows, and a 1x1 conv gives class scores. These are
    upsampled x2 and added to 1x1 scores of the second-deepest pool, upsampled x2 and added to scores of the
    third-deepest pool, then upsampled back to the input resolution: x8 with five stages (FCN-8s), x4 with four
    (finer output, for thin structures), ``output_stride = 2^(len(features) - 2)`` in general. With
    ``full_resolution_scores`` the fusion goes one step further, as FCN-8s goes from FCN-16s: 1x1 scores of the
    first stage's features before its pooling (full resolution) are added after the final upsampling, so objects
    a few voxels across (small lesions) keep a sharp outline; the output stride is then 1.

    Any input size works: the input is zero-padded at the far end of each axis to a multiple of
    2^len(features) and the output is cropped back, so the output has exactly the input's spatial shape.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: classes (logits, no softmax).
        features: channels of the encoder stages, at least three.
        convs_per_stage: conv blocks per encoder stage.
        act: activation type and arguments.
        norm: normalisation type and arguments.
        dropout: dropout in the head.
        upsample: ``"deconv"`` (learnable, initialised to linear interpolation) or ``"linear"`` (fixed).
        context: module mapping the deepest feature map (``features[-1]`` channels) to the same shape, e.g. a
            recurrent layer giving every position global context; identity by default.
        full_resolution_scores: also fuse class scores of the first stage's full-resolution features.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        convs_per_stage: int = 2,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        upsample: str = "deconv",
        context: nn.Module | None = None,
        full_resolution_scores: bool = False,
    ) -> None:
        super().__init__()
        if len(features) < 3:
            raise ValueError(f"FCN needs at least three encoder stages, got features={tuple(features)}.")
        self.spatial_dims = spatial_dims
        self.convs_per_stage = convs_per_stage
        self.full_resolution_scores = full_resolution_scores
        self.divisor = 2 ** len(features)
        stages, channels = [], in_channels
        for width in features:
            blocks = [
                Convolution(spatial_dims, channels if i == 0 else width, width, act=act, norm=norm, padding=1)
                for i in range(convs_per_stage)
            ]
            stages.append(nn.Sequential(*blocks, Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)))
            channels = width
        self.stages = nn.ModuleList(stages)
        deepest = features[-1]
        self.head = nn.Sequential(
            Convolution(spatial_dims, deepest, deepest, act=act, norm=None, dropout=dropout, padding=1),
            Convolution(spatial_dims, deepest, deepest, kernel_size=1, act=act, norm=None, dropout=dropout),
        )
        self.context = context if context is not None else nn.Identity()
        self.score_deep = Conv[Conv.CONV, spatial_dims](deepest, out_channels, kernel_size=1)
        self.score_pool4 = Conv[Conv.CONV, spatial_dims](features[-2], out_channels, kernel_size=1)
        self.score_pool3 = Conv[Conv.CONV, spatial_dims](features[-3], out_channels, kernel_size=1)
        self.up_deep = _Upsample(spatial_dims, out_channels, 2, upsample)
        self.up_pool4 = _Upsample(spatial_dims, out_channels, 2, upsample)
        # the third-deepest pool is at 1/2^(len(features) - 2) of the input: 1/8 with five stages (FCN-8s)
        self.output_stride = 2 ** (len(features) - 2)
        self.up_final = _Upsample(spatial_dims, out_channels, self.output_stride, upsample)
        self.score_full = (
            Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1) if full_resolution_scores else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        pad: list[int] = []
        for axis in range(len(shape) - 1, -1, -1):  # F.pad lists the last axis first
            pad += [0, (self.divisor - shape[axis] % self.divisor) % self.divisor]
        x = F.pad(x, pad)
        pools: list[torch.Tensor] = []
        full = x
        for k, stage in enumerate(self.stages):
            if k == 0 and self.full_resolution_scores:
                for j, layer in enumerate(stage):
                    if j == self.convs_per_stage:  # the pooling: keep the full-resolution features before it
                        full = x
                    x = layer(x)
            else:
                x = stage(x)
            pools.append(x)
        scores = self.score_deep(self.context(self.head(x)))
        scores = self.up_deep(scores) + self.score_pool4(pools[-2])
        scores = self.up_pool4(scores) + self.score_pool3(pools[-3])
        scores = self.up_final(scores)
        if self.score_full is not None:
            scores = scores + self.score_full(full)
        if self.spatial_dims == 2:
            return scores[:, :, : shape[0], : shape[1]]
        return scores[:, :, : shape[0], : shape[1], : shape[2]]
