"""The shared FCN-8s network: shapes for any size, 2D and 3D, fusion, upsampling init, TorchScript, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.networks import FCN
from common.networks.fcn import _Upsample
from conftest import train_briefly

TINY = (4, 8, 8, 16, 16)


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 3, 64, 64), (1, 1, 33, 100), (1, 2, 7, 9)])
@pytest.mark.parametrize("upsample", ["deconv", "linear"])
def test_2d_output_has_input_size(shape, upsample):
    net = FCN(2, shape[1], 4, features=TINY, upsample=upsample)
    assert net(torch.rand(shape)).shape == (shape[0], 4, *shape[2:])


@pytest.mark.parametrize("shape", [(1, 1, 17, 23, 29), (1, 1, 32, 32, 16)])
def test_3d_output_has_input_size(shape):
    assert FCN(3, 1, 2, features=TINY)(torch.rand(shape)).shape == (1, 2, *shape[2:])


@pytest.mark.parametrize("features", [(4, 8, 8), (4, 8, 8, 16), (4, 8, 8, 16, 16)])
def test_output_stays_aligned_with_the_input_for_any_depth(features):
    """Shifting the input by one padding unit shifts the scores by the same amount: the final upsampling matches
    the resolution of the finest fused scores (a wrong factor would stretch the output and crop it)."""
    torch.manual_seed(0)
    net = FCN(2, 1, 3, features=features, upsample="linear").eval()
    step = net.divisor
    assert net.output_stride == 2 ** (len(features) - 2)
    x = torch.zeros(1, 1, 24 * step, 24 * step)  # wide margins: the image border is outside the receptive field
    x[..., 10 * step : 11 * step, 10 * step : 11 * step] = torch.rand(step, step)
    shifted = torch.roll(x, shifts=(step, step), dims=(2, 3))
    with torch.no_grad():
        y, y_shifted = net(x), net(shifted)
    inner = (slice(None), slice(None), slice(8 * step, 13 * step), slice(8 * step, 13 * step))
    moved = (slice(None), slice(None), slice(9 * step, 14 * step), slice(9 * step, 14 * step))
    torch.testing.assert_close(y_shifted[moved], y[inner], rtol=1e-4, atol=1e-5)


def test_too_few_stages_is_refused():
    with pytest.raises(ValueError, match="at least three"):
        FCN(2, 1, 2, features=(4, 8))


def test_deconv_starts_as_bilinear_interpolation():
    up = _Upsample(2, 1, 2, "deconv")
    x = torch.rand(1, 1, 8, 8)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x)[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2])
    constant = up(torch.ones(1, 1, 6, 6))[..., 2:-2, 2:-2]
    torch.testing.assert_close(constant, torch.ones_like(constant))


def test_context_module_is_applied_at_the_bottleneck():
    class Record(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(x.shape[1])
            return x * 0

    context = Record()
    torch.manual_seed(0)
    net = FCN(2, 1, 3, features=TINY, context=context).eval()
    plain = FCN(2, 1, 3, features=TINY).eval()
    plain.load_state_dict(net.state_dict())
    x = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        assert not torch.allclose(net(x), plain(x))
    assert context.seen == [TINY[-1]]


def test_skip_fusion_is_used():
    torch.manual_seed(0)
    net = FCN(2, 1, 3, features=TINY).eval()
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        before = net(x)
        net.score_pool3.weight.zero_()
        net.score_pool3.bias.zero_()
        assert not torch.allclose(before, net(x))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (1, 1, 37, 41)), (3, (1, 1, 17, 20, 9))])
def test_torchscript_matches_eager(spatial_dims, shape):
    net = FCN(spatial_dims, 1, 4, features=TINY).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_gradients_reach_the_first_layer_and_loss_drops():
    torch.manual_seed(0)
    net = FCN(2, 1, 3, features=TINY)
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    target[:, 8:24, 4:16], target[:, 4:20, 18:30] = 1, 2  # two blocks, coarse enough for 1/8-resolution scores
    x = (target[:, None].float() / 2 + 0.2 * torch.randn(4, 1, 32, 32)).clamp(0, 1)
    losses = train_briefly(net, x, target, steps=30, lr=1e-2)
    first_conv = net.stages[0][0].conv
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert losses[-1] < 0.7 * losses[0]


def test_full_resolution_scores_reach_single_pixels():
    """With ``full_resolution_scores`` the first stage's unpooled scores are fused: the output stride is 1, so a
    change of one input pixel changes that pixel's output differently from its pooling neighbour's."""
    torch.manual_seed(0)
    net = FCN(2, 1, 2, features=(4, 8, 8), full_resolution_scores=True).eval()
    plain = FCN(2, 1, 2, features=(4, 8, 8)).eval()
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in plain.parameters()) == 4 * 2 + 2
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.score_full.weight.zero_()
        net.score_full.bias.zero_()
        assert not torch.allclose(before, net(x))  # the full-resolution scores take part
        net.score_full.weight.fill_(1.0)
        y = net(x)
        x[..., 10, 10] += 1.0
        delta = net(x) - y
    # the first stage's 3x3 convolutions only reach a few pixels, and the 2x2 neighbours differ (stride 1)
    assert not torch.allclose(delta[..., 10, 10], delta[..., 10, 11])


@pytest.mark.parametrize("spatial_dims, shape", [(2, (1, 1, 37, 41)), (3, (1, 1, 17, 20, 9))])
def test_full_resolution_scores_keep_size_and_script(spatial_dims, shape):
    net = FCN(spatial_dims, 1, 3, features=(4, 8, 8), full_resolution_scores=True).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 3, *shape[2:])
        torch.testing.assert_close(torch.jit.script(net)(x), y)
