"""A patch-classification CNN for 2D images that is evaluated densely, fully convolutionally, at inference.

The network labels the centre pixel of a ``patch_size`` x ``patch_size`` multimodal patch. At inference the
same weights run over a whole slice in one pass ("fast scanning", Giusti et al. 2013; filter rarefaction or
a-trous evaluation, Li et al. 2014): every stride-2 max-pool runs at stride 1 instead, and every layer after it
is dilated by the product of the strides removed before it. The dense score at each pixel then equals, exactly,
the patch-mode score of the patch centred there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = ["DenseView", "PatchCNN", "patch_cnn_plan"]

_POOL_KERNEL = 3
_POOL_STRIDE = 2
_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}


def patch_cnn_plan(patch_size: int, num_stages: int, convs_per_stage: int = 1) -> int | None:
    """Side of the feature map left after the conv stages for this patch size, or None if the layers don't fit it.

    The layers fit when every max-pool covers its input exactly (no row or column dropped by rounding) and at
    least one pixel is left, so that the receptive field of the network is exactly ``patch_size``.
    """
    if patch_size < 1 or patch_size % 2 == 0:
        return None
    size = patch_size
    for stage in range(num_stages):
        size -= 2 * convs_per_stage  # valid 3x3 convs
        if size < 1:
            return None
        if stage < num_stages - 1:
            if size < _POOL_KERNEL or (size - _POOL_KERNEL) % _POOL_STRIDE != 0:
                return None
            size = (size - _POOL_KERNEL) // _POOL_STRIDE + 1
    return size


class _ConvBlock(nn.Module):
    """Valid 3x3 conv, optional batch norm, activation; the conv can run dilated (dense mode)."""

    def __init__(self, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=norm is None)
        norm_layer = get_norm_layer(norm, spatial_dims=2, channels=out_channels) if norm is not None else None
        self.norm: nn.Module = norm_layer if norm_layer is not None else nn.Identity()
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor, dilation: int) -> torch.Tensor:
        x = F.conv2d(x, self.conv.weight, self.conv.bias, dilation=dilation)
        return self.act(self.norm(x))


class PatchCNN(nn.Module):
    """Classifies the centre pixel of a 2D multimodal patch; runs densely over whole slices with the same weights.

    Layers (all unpadded): ``len(features)`` stages of ``convs_per_stage`` 3x3 conv-norm-act blocks, the stages
    separated by 3x3 stride-2 max-pools; then a classifier head written as convolutions: ``fc`` (a conv whose
    kernel covers the whole remaining feature map, i.e. a fully connected layer) to ``hidden`` channels,
    activation, dropout, and a 1x1 conv to ``out_channels`` logits. With the defaults a 33x33 patch goes
    33 -conv-> 31 -pool-> 15 -conv-> 13 -pool-> 6 -conv-> 4 -fc(4x4)-> 1.

    The receptive field is exactly ``patch_size`` and centred on the centre pixel: every kernel is odd and every
    pool covers its input exactly. (Kernel-2 pooling would make the receptive field even, off-centre by half a
    pixel, hence the overlapping 3x3 pools.) Not every patch size fits the layers; the constructor says which do
    (with the default three stages of one conv: 21, 25, 29, 33, 37, ...; see :func:`patch_cnn_plan`).

    Two modes, the same weights (the mode is not part of the state dict):

    - patch mode (``dense=False``, for training): input ``(B, C, patch_size, patch_size)``, output
      ``(B, out_channels)``, the logits of the centre pixel.
    - dense mode (``dense=True``, or :meth:`forward_dense`): input ``(B, C, H, W)`` of any size, output
      ``(B, out_channels, H, W)``, one pass. The input is padded by ``patch_size // 2`` on each side
      (``padding_mode``: ``"zeros"`` by default, or ``"reflect"`` / ``"replicate"``), the pools run at stride 1 and
      every later conv and pool is dilated by 2 per pool before it. The score at ``(y, x)`` equals the patch-mode
      score of the patch centred at ``(y, x)`` cut from the padded image, so with zero padding border pixels see
      zeros outside the image, exactly as zero-padded training patches would. Exact in eval mode (batch norm with
      running statistics, no dropout). Usable as the network of MONAI's ``SliceInferer`` (roi = the whole slice)
      or ``SlidingWindowInferer``; note that with windows smaller than the slice, pixels near a window's edge
      see the padding of that window rather than the neighbouring image.

    Args:
        in_channels: input channels (modalities).
        out_channels: classes (logits, no softmax).
        patch_size: side of the square patch, odd, fitting the layers.
        features: channels of the conv stages.
        hidden: channels of the fully connected layer.
        dropout: dropout after the fully connected layer.
        norm: ``"batch"`` (or ``("batch", {...})``) or None. Instance, group and layer norm are refused: their
            statistics depend on the input's extent, so dense and patch scores would differ.
        act: activation type and arguments (any pointwise activation).
        convs_per_stage: 3x3 convs per stage.
        padding_mode: how the dense mode pads the image border: ``"zeros"``, ``"reflect"`` or ``"replicate"``.
        dense: start in dense mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        patch_size: int = 33,
        features: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        dropout: float = 0.0,
        norm: str | tuple | None = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        convs_per_stage: int = 1,
        padding_mode: str = "zeros",
        dense: bool = False,
    ) -> None:
        super().__init__()
        if len(features) < 1 or convs_per_stage < 1:
            raise ValueError("PatchCNN needs at least one stage of at least one conv.")
        fc_kernel = patch_cnn_plan(patch_size, len(features), convs_per_stage)
        if fc_kernel is None:
            fits = [p for p in range(1, 4 * patch_size + 64) if patch_cnn_plan(p, len(features), convs_per_stage)]
            raise ValueError(
                f"patch_size={patch_size} does not fit {len(features)} stages of {convs_per_stage} valid 3x3 conv(s) "
                f"with 3x3 stride-2 pools between them; sizes that fit: {fits[:8]}."
            )
        if norm is not None:
            name = norm if isinstance(norm, str) else norm[0]
            if str(name).lower() != "batch":
                raise ValueError(f"norm must be 'batch' or None (dense and patch scores must agree), got {norm!r}.")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {sorted(_PADDING_MODES)}, got {padding_mode!r}.")
        self.patch_size = patch_size
        self.fc_kernel = fc_kernel
        self.pad_mode = _PADDING_MODES[padding_mode]
        self.dense = dense
        self.num_stages = len(features)
        stages, channels = [], in_channels
        for width in features:
            blocks = [_ConvBlock(channels if i == 0 else width, width, act, norm) for i in range(convs_per_stage)]
            stages.append(nn.ModuleList(blocks))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Conv2d(channels, hidden, kernel_size=fc_kernel)
        self.fc_act = get_act_layer(act)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(hidden, out_channels, kernel_size=1)
        # receptive field: 1 + sum over layers of (kernel - 1) * (product of the strides before the layer)
        rf, jump = 1, 1
        for stage in range(self.num_stages):
            rf += 2 * convs_per_stage * jump
            if stage < self.num_stages - 1:
                rf += (_POOL_KERNEL - 1) * jump
                jump *= _POOL_STRIDE
        self.receptive_field = rf + (fc_kernel - 1) * jump
        if self.receptive_field != patch_size:  # guaranteed by patch_cnn_plan; a guard against edits
            raise RuntimeError(f"receptive field {self.receptive_field} != patch_size {patch_size}.")

    def _scores(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        """Run all layers: strided pools (patch mode) or stride-1 pools with dilated later layers (dense mode)."""
        dilation = 1
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, dilation)
            if i < self.num_stages - 1:
                if dense:
                    x = F.max_pool2d(x, 3, stride=1, dilation=dilation)  # 3, 2: _POOL_KERNEL, _POOL_STRIDE
                    dilation *= 2
                else:
                    x = F.max_pool2d(x, 3, stride=2)
        x = F.conv2d(x, self.fc.weight, self.fc.bias, dilation=dilation)
        return self.classifier(self.drop(self.fc_act(x)))

    def forward_patch(self, x: torch.Tensor) -> torch.Tensor:
        """Centre-pixel logits ``(B, out_channels)`` of patches ``(B, C, patch_size, patch_size)``."""
        if x.dim() != 4 or x.shape[2] != self.patch_size or x.shape[3] != self.patch_size:
            raise ValueError(
                f"patch mode expects (B, C, {self.patch_size}, {self.patch_size}), got {list(x.shape)}; "
                "use dense mode (dense=True or forward_dense) for whole images."
            )
        return self._scores(x, False).flatten(1)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``(B, out_channels, H, W)`` of images ``(B, C, H, W)`` of any size, in one pass.

        Runs channels-last: the dilated fully connected layer, most of the cost, is about twice as fast so on the
        CPU (oneDNN); the result is the same up to float rounding and is returned contiguous."""
        if x.dim() != 4:
            raise ValueError(f"dense mode expects (B, C, H, W), got {list(x.shape)}.")
        p = self.patch_size // 2
        padded = F.pad(x, [p, p, p, p], mode=self.pad_mode).contiguous(memory_format=torch.channels_last)
        return self._scores(padded, True).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return self.forward_dense(x)
        return self.forward_patch(x)


class DenseView(nn.Module):
    """A PatchCNN seen in dense mode, sharing its weights: for the evaluator (sliding windows over whole slices)
    while the same network trains in patch mode. ``network`` may be wrapped (e.g. ``DistributedDataParallel``);
    its ``module`` is then used. Save and load the network itself, not the view."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        network = getattr(network, "module", network)
        if not isinstance(network, PatchCNN):
            raise TypeError(f"DenseView needs a PatchCNN, got {type(network).__name__}.")
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_dense(x)
