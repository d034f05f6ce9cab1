"""The patch-classification CNN: patch and dense shapes, dense == patch-by-patch exactly, MONAI inferers, training."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import SliceInferer

from common.networks import PatchCNN
from common.networks.patch_cnn import patch_cnn_plan
from conftest import train_briefly


def randomised(net: PatchCNN, seed: int = 0) -> PatchCNN:
    """The network in eval mode with random batch-norm running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
    return net.eval()


def padded(net: PatchCNN, x: torch.Tensor) -> torch.Tensor:
    """The image padded as the dense mode pads it."""
    p = net.patch_size // 2
    return F.pad(x, [p, p, p, p], mode=net.pad_mode)


def patch_by_patch(net: PatchCNN, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Reference: classify the patch centred at every pixel, one patch-mode pass per batch of patches."""
    b, c, h, w = x.shape
    p = net.patch_size
    columns = F.unfold(padded(net, x), p)  # (B, C * P * P, H * W)
    patches = columns.transpose(1, 2).reshape(-1, c, p, p)
    scores = torch.cat([net.forward_patch(part) for part in patches.split(chunk)])
    return scores.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def test_patch_mode_gives_centre_pixel_logits():
    net = PatchCNN(4, 4)
    assert net(torch.rand(3, 4, 33, 33)).shape == (3, 4)
    assert PatchCNN(2, 3, patch_size=21, features=(8, 8, 8), hidden=16)(torch.rand(2, 2, 21, 21)).shape == (2, 3)
    assert net.receptive_field == 33 and net.fc_kernel == 4


@pytest.mark.parametrize("shape", [(1, 4, 37, 53), (2, 4, 64, 64), (1, 4, 1, 1), (1, 4, 5, 90)])
def test_dense_output_has_input_size(shape):
    net = PatchCNN(4, 4, dense=True).eval()
    with torch.no_grad():
        assert net(torch.rand(shape)).shape == (shape[0], 4, *shape[2:])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # defaults: 33x33, three stages of one conv, batch norm, zero padding
        {"padding_mode": "reflect"},
        {"patch_size": 35, "features": (8, 16, 16), "convs_per_stage": 2, "hidden": 32, "norm": None},
        {"patch_size": 53, "features": (8, 16, 16, 16), "hidden": 32},  # four stages, 2x2 fc, larger than the image
    ],
)
def test_dense_equals_patch_classification_at_sampled_pixels(kwargs):
    torch.manual_seed(0)
    net = randomised(PatchCNN(4, 4, **kwargs))
    h, w = 48, 40
    x = torch.randn(1, 4, h, w)
    generator = torch.Generator().manual_seed(1)
    pixels = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, 17), (h - 1, 5), (23, 0), (9, w - 1), (2, 3)]
    pixels += list(zip(torch.randint(0, h, (21,), generator=generator).tolist(),
                       torch.randint(0, w, (21,), generator=generator).tolist()))  # fmt: skip
    p = net.patch_size
    with torch.no_grad():
        dense = net.forward_dense(x)
        big = padded(net, x)
        patches = torch.cat([big[:, :, y : y + p, x_ : x_ + p] for y, x_ in pixels])
        expected = net.forward_patch(patches)
    actual = torch.stack([dense[0, :, y, x_] for y, x_ in pixels])
    assert dense.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_zero_padding_means_zero_padded_patches_at_the_border():
    torch.manual_seed(0)
    net = randomised(PatchCNN(4, 4))
    x = torch.rand(1, 4, 20, 20)
    patch = torch.zeros(1, 4, 33, 33)
    patch[:, :, 16:, 16:] = x[:, :, :17, :17]  # the patch centred at pixel (0, 0), zeros outside the image
    with torch.no_grad():
        torch.testing.assert_close(net.forward_dense(x)[:, :, 0, 0], net.forward_patch(patch), rtol=1e-4, atol=1e-4)


def test_dense_score_depends_only_on_the_patch_around_the_pixel():
    torch.manual_seed(0)
    net = randomised(PatchCNN(4, 4))
    x = torch.rand(1, 4, 60, 60, requires_grad=True)
    net.forward_dense(x)[0, :, 30, 25].sum().backward()
    support = x.grad.abs().sum(1)[0] > 0
    rows, cols = torch.nonzero(support, as_tuple=True)
    assert rows.min() >= 30 - 16 and rows.max() <= 30 + 16 and cols.min() >= 25 - 16 and cols.max() <= 25 + 16
    # and the patch mode sees all of its patch, up to the outermost rows and columns
    patches = torch.rand(16, 4, 33, 33, requires_grad=True)
    net.forward_patch(patches).sum().backward()
    grad = patches.grad.abs().sum((0, 1))
    assert grad[0].sum() > 0 and grad[-1].sum() > 0 and grad[:, 0].sum() > 0 and grad[:, -1].sum() > 0


def test_cropping_to_a_box_plus_half_the_patch_keeps_the_scores_inside_the_box():
    """What the brain bundle's inference relies on when it crops each volume to the head's box plus 16 pixels."""
    torch.manual_seed(1)
    net = randomised(PatchCNN(3, 4)).eval()
    x = torch.randn(1, 3, 90, 80)
    top, bottom, left, right = 30, 60, 25, 50  # the box; the crop adds 16 = patch_size // 2 on each side
    with torch.no_grad():
        whole = net.forward_dense(x)[..., top:bottom, left:right]
        cropped = net.forward_dense(x[..., top - 16 : bottom + 16, left - 16 : right + 16])[..., 16:-16, 16:-16]
        narrower = net.forward_dense(x[..., top - 8 : bottom + 8, left - 8 : right + 8])[..., 8:-8, 8:-8]
    torch.testing.assert_close(cropped, whole, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(narrower, whole, atol=1e-3)  # a smaller margin would change the border pixels


def test_dense_equals_patch_by_patch_everywhere():
    torch.manual_seed(0)
    net = randomised(PatchCNN(4, 4))
    with torch.no_grad():
        x = torch.randn(2, 4, 24, 24)
        torch.testing.assert_close(net.forward_dense(x), patch_by_patch(net, x), rtol=1e-4, atol=1e-4)
        x = torch.randn(1, 4, 64, 64)
        start = time.perf_counter()
        dense = net.forward_dense(x)
        dense_s = time.perf_counter() - start
        start = time.perf_counter()
        reference = patch_by_patch(net, x)
        patch_s = time.perf_counter() - start
    torch.testing.assert_close(dense, reference, rtol=1e-4, atol=1e-4)
    print(f"64x64: dense {dense_s:.3f} s, patch by patch {patch_s:.3f} s, ratio {patch_s / dense_s:.1f}x")


def test_slice_inferer_runs_the_dense_network_on_every_slice():
    torch.manual_seed(0)
    patch_net = randomised(PatchCNN(4, 4, features=(8, 16, 16), hidden=32))
    dense_net = PatchCNN(4, 4, features=(8, 16, 16), hidden=32, dense=True).eval()
    dense_net.load_state_dict(patch_net.state_dict())  # the mode is not part of the weights
    volume = torch.randn(1, 4, 24, 20, 3)
    with torch.no_grad():
        out = SliceInferer(roi_size=(24, 20), spatial_dim=2, sw_batch_size=2)(volume, dense_net)
        expected = torch.stack([patch_net.forward_dense(volume[..., k]) for k in range(3)], dim=-1)
    assert out.shape == (1, 4, 24, 20, 3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r"sizes that fit: \[21, 25, 29, 33"):
        PatchCNN(4, 4, patch_size=31)
    with pytest.raises(ValueError, match="does not fit"):
        PatchCNN(4, 4, patch_size=32)
    with pytest.raises(ValueError, match="norm must be"):
        PatchCNN(4, 4, norm=("instance", {"affine": True}))
    with pytest.raises(ValueError, match="padding_mode"):
        PatchCNN(4, 4, padding_mode="circular")
    with pytest.raises(ValueError, match="dense mode"):
        PatchCNN(4, 4)(torch.rand(1, 4, 64, 64))
    assert patch_cnn_plan(33, 3) == 4 and patch_cnn_plan(35, 3, 2) == 1 and patch_cnn_plan(33, 3, 2) is None


def test_torchscript_matches_eager_in_both_modes():
    torch.manual_seed(0)
    net = randomised(PatchCNN(4, 4, features=(8, 16, 16), hidden=32))
    scripted = torch.jit.script(net)
    patches, image = torch.rand(3, 4, 33, 33), torch.rand(1, 4, 37, 29)
    with torch.no_grad():
        torch.testing.assert_close(scripted(patches), net(patches))
        scripted.dense = True
        torch.testing.assert_close(scripted(image), net.forward_dense(image))


def test_gradients_flow_and_loss_drops_on_a_toy_problem():
    torch.manual_seed(0)
    net = PatchCNN(1, 2, patch_size=21, features=(8, 16, 16), hidden=32)
    x = torch.rand(64, 1, 21, 21)
    target = (x[:, 0, 10, 10] > 0.5).long()  # class of the centre pixel: is it bright?
    losses = train_briefly(net, x, target, steps=25, lr=3e-3)
    first_conv = net.stages[0][0].conv
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert losses[-1] < 0.5 * losses[0]
