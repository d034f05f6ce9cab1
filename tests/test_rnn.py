"""The recurrent context layers: shapes, a loop-by-loop reference, global context, identity at init, gradients,
FCN drop-in, TorchScript."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from common.networks import FCN, ConvGRU, ReNet, ReNet2d, ReNet3d

FEATURES = (8, 16, 16, 32)


def randomise_projection(net: nn.Module) -> nn.Module:
    """Replace the zero-initialised projection by random weights, so the recurrent path shows in the output."""
    with torch.no_grad():
        for conv in [m for name, m in net.named_modules() if name.endswith("proj") and hasattr(m, "weight")]:
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.1)
    return net


def change(net: nn.Module, x: torch.Tensor, where: tuple) -> torch.Tensor:
    """Absolute change of the output (max over channels) when ``x[where]`` is increased by 1, in float64: an
    untrained RNN's influence decays along the sequence below float32 rounding within a few steps."""
    net, x = net.double(), x.double()
    perturbed = x.clone()
    perturbed[where] += 1.0
    with torch.no_grad():
        return (net(perturbed) - net(x)).abs().amax(dim=1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 3, 1, 9), (1, 3, 9, 1), (1, 3, 1, 1)])
def test_renet2d_shapes(cell, shape):
    assert ReNet2d(3, 4, cell=cell)(torch.rand(shape)).shape == shape
    assert ReNet2d(3, 4, out_channels=5, cell=cell)(torch.rand(shape)).shape == (shape[0], 5, *shape[2:])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 5, 4), (1, 3, 1, 1, 6)])
def test_renet3d_shapes(cell, shape):
    assert ReNet3d(3, 4, cell=cell)(torch.rand(shape)).shape == shape
    assert ReNet3d(3, 4, out_channels=2, cell=cell)(torch.rand(shape)).shape == (shape[0], 2, *shape[2:])


@pytest.mark.parametrize("slices", [1, 5])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_convgru_shapes(slices, bidirectional):
    out = ConvGRU(3, 4, bidirectional=bidirectional)(torch.rand(2, 3, 5, 7, slices))
    assert out.shape == (2, 3 if bidirectional else 4, 5, 7, slices)


def test_convgru_3d_slices_and_kernel_size():
    assert ConvGRU(2, 3, kernel_size=5, spatial_dims=3)(torch.rand(1, 2, 3, 4, 5, 2)).shape == (1, 2, 3, 4, 5, 2)
    with pytest.raises(ValueError, match="odd"):
        ConvGRU(2, 3, kernel_size=2)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cell"):
        ReNet2d(3, 4, cell="rnn")
    with pytest.raises(ValueError, match="spatial_dims"):
        ReNet(4, 3, 4)


def test_factory_from_a_bundle_config():
    config = {"_target_": "common.networks.ReNet", "spatial_dims": 2, "in_channels": 8, "hidden_size": 4}
    net = ConfigParser({"net": config}).get_parsed_content("net")
    assert isinstance(net, ReNet) and net.spatial_dims == 2
    assert net(torch.rand(1, 8, 3, 5)).shape == (1, 8, 3, 5)
    three = ReNet(3, 8, 4, cell="lstm")
    assert isinstance(three.rnns[0], nn.LSTM) and len(three.rnns) == 3


def test_renet2d_matches_a_row_then_column_loop():
    """Every row is one sequence over W for the first RNN, every column of its output one sequence over H for the
    second: computed one line at a time, the result must equal the batched reshapes."""
    torch.manual_seed(0)
    net = randomise_projection(ReNet2d(3, 4)).eval()
    x = torch.rand(2, 3, 4, 5)
    b, _, h, w = x.shape
    with torch.no_grad():
        rows = torch.stack(
            [torch.stack([net.rnns[0](x[i, :, r, :].T[None])[0][0] for r in range(h)]) for i in range(b)]
        )  # (B, H, W, 2 * hidden)
        cols = torch.stack(
            [torch.stack([net.rnns[1](rows[i, :, c][None])[0][0] for c in range(w)], dim=1) for i in range(b)]
        )  # (B, H, W, 2 * hidden)
        expected = x + net.proj(cols.permute(0, 3, 1, 2))
        torch.testing.assert_close(net(x), expected)


def test_batch_elements_stay_independent():
    torch.manual_seed(0)
    x2d, x3d = torch.rand(3, 2, 4, 5), torch.rand(3, 2, 3, 4, 5)
    for net, x in [(ReNet2d(2, 3), x2d), (ReNet3d(2, 3), x3d), (ConvGRU(2, 3), x3d)]:
        delta = change(randomise_projection(net).eval(), x, (1,))
        assert delta[1].abs().sum() > 0
        assert torch.equal(delta[0], torch.zeros_like(delta[0])) and torch.equal(delta[2], torch.zeros_like(delta[2]))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_renet2d_gives_global_context(cell):
    """A pixel in one corner changes the output everywhere, the opposite corner included; two 3x3 convs do not."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, 9, 11)
    delta = change(randomise_projection(ReNet2d(2, 4, cell=cell)).eval(), x, (0, slice(None), 0, 0))
    assert (delta > 0).all() and delta[0, -1, -1] > 1e-12
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    local = change(cnn, x, (0, slice(None), 0, 0))
    assert local[0, 0, 0] > 0 and local[0, -1, -1] == 0 and local[0, 3:, 3:].abs().sum() == 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_renet3d_gives_global_context(cell):
    torch.manual_seed(0)
    x = torch.rand(1, 2, 5, 6, 7)
    delta = change(randomise_projection(ReNet3d(2, 4, cell=cell)).eval(), x, (0, slice(None), 0, 0, 0))
    assert (delta > 0).all() and delta[0, -1, -1, -1] > 1e-12
    cnn = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1))
    local = change(cnn, x, (0, slice(None), 0, 0, 0))
    assert local[0, 0, 0, 0] > 0 and local[0, -1, -1, -1] == 0


def test_convgru_carries_context_across_slices():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 5, 5, 5)
    bi = randomise_projection(ConvGRU(2, 3)).eval()
    assert change(bi, x, (0, slice(None), 2, 2, 0))[0, 2, 2, -1] > 1e-6  # first slice reaches the last
    assert change(bi, x, (0, slice(None), 2, 2, -1))[0, 2, 2, 0] > 1e-6  # and the last the first
    uni = ConvGRU(2, 3, bidirectional=False).eval()
    assert change(uni, x, (0, slice(None), 2, 2, 0))[0, 2, 2, -1] > 1e-6
    causal = change(uni, x, (0, slice(None), 2, 2, -1))
    assert causal[..., -1].abs().sum() > 0 and causal[..., :-1].abs().sum() == 0  # forward only: no look-ahead


def test_convgru_backward_direction_is_the_forward_one_on_reversed_slices():
    """Swapping the two directions' weights and reversing the slices must reverse the output: the backward sweep
    reads the slices last to first and its states are put back in slice order."""
    torch.manual_seed(0)
    net = randomise_projection(ConvGRU(2, 3)).eval()
    swapped = ConvGRU(2, 3).eval()
    swapped.forward_sweep.load_state_dict(net.backward_sweep.state_dict())
    swapped.backward_sweep.load_state_dict(net.forward_sweep.state_dict())
    with torch.no_grad():
        swapped.proj.weight.copy_(torch.cat(net.proj.weight.chunk(2, dim=1)[::-1], dim=1))
        swapped.proj.bias.copy_(net.proj.bias)
        x = torch.rand(2, 2, 4, 5, 6)
        torch.testing.assert_close(swapped(x.flip(-1)), net(x).flip(-1))


@pytest.mark.parametrize(
    "net, shape",
    [
        (ReNet2d(3, 4), (2, 3, 5, 7)),
        (ReNet2d(3, 4, cell="lstm"), (1, 3, 1, 9)),
        (ReNet3d(3, 4), (1, 3, 3, 5, 4)),
        (ReNet(2, 3, 4), (1, 3, 4, 4)),
        (ConvGRU(3, 4), (1, 3, 5, 4, 3)),
    ],
)
def test_untrained_residual_module_is_the_identity(net, shape):
    x = torch.rand(shape)
    assert torch.equal(net(x), x)


def test_without_residual_the_output_is_the_projection():
    torch.manual_seed(0)
    net = ReNet2d(3, 4, out_channels=2)
    assert not net.residual and net.proj.weight.abs().sum() > 0
    assert net(torch.rand(1, 3, 4, 5)).abs().sum() > 0


def _nonzero_grad(param: torch.Tensor) -> bool:
    return param.grad is not None and bool(param.grad.abs().sum() > 0)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: ReNet2d(2, 3), (2, 2, 3, 5)),
        (lambda: ReNet2d(2, 3, cell="lstm"), (2, 2, 3, 5)),
        (lambda: ReNet3d(2, 3, cell="lstm"), (1, 2, 3, 4, 2)),
        (lambda: ReNet2d(2, 3, out_channels=4), (1, 2, 3, 5)),
        (lambda: ConvGRU(2, 3), (1, 2, 4, 4, 3)),
        (lambda: ConvGRU(2, 3, bidirectional=False), (1, 2, 4, 4, 3)),
    ],
)
def test_gradients_reach_the_input_and_every_parameter(make, shape):
    torch.manual_seed(0)
    net = randomise_projection(make())
    x = torch.rand(shape, requires_grad=True)
    net(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert [name for name, p in net.named_parameters() if not _nonzero_grad(p)] == []


@pytest.mark.parametrize(
    "make, shape", [(lambda: ReNet2d(2, 3), (2, 2, 3, 5)), (lambda: ConvGRU(2, 3), (1, 2, 3, 3, 4))]
)
def test_zero_projection_learns_then_passes_gradient_to_the_rnn(make, shape):
    """At init only the projection gets gradient (it multiplies everything else by zero); after one step every
    parameter does."""
    torch.manual_seed(0)
    net = make()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(shape)
    net(x).pow(2).sum().backward()
    assert _nonzero_grad(net.proj.weight)
    inner = [p for name, p in net.named_parameters() if not name.startswith("proj")]
    assert not any(_nonzero_grad(p) for p in inner)
    optimizer.step()
    optimizer.zero_grad()
    net(x).pow(2).sum().backward()
    assert [name for name, p in net.named_parameters() if not _nonzero_grad(p)] == []


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_renet_drops_into_the_fcn(cell):
    """Odd input size, same shape out; with the untrained (identity) context the FCN computes what it did without."""
    torch.manual_seed(0)
    net = FCN(2, 1, 4, features=FEATURES, context=ReNet2d(FEATURES[-1], 16, cell=cell)).eval()
    x = torch.rand(1, 1, 37, 45)
    assert net(x).shape == (1, 4, 37, 45)
    plain = FCN(2, 1, 4, features=FEATURES).eval()
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(key.startswith("context.") for key in missing)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x))


def test_fcn_with_renet_sees_the_far_corner_and_plain_fcn_does_not():
    """160x160 input: the plain FCN's receptive field (about 150 px) misses the opposite corner; batch norm in eval
    mode is per pixel (instance norm would leak global statistics). With the ReNet context the corner is seen."""
    torch.manual_seed(0)
    plain = FCN(2, 1, 2, features=FEATURES, norm="batch").eval()
    net = FCN(2, 1, 2, features=FEATURES, norm="batch", context=ReNet2d(FEATURES[-1], 8)).eval()
    net.load_state_dict(plain.state_dict(), strict=False)
    randomise_projection(net.context)
    x = torch.rand(1, 1, 160, 160)
    corner = (0, 0, slice(0, 4), slice(0, 4))
    near, far = (0, slice(0, 8), slice(0, 8)), (0, slice(-8, None), slice(-8, None))
    local = change(plain, x, corner)
    assert local[near].abs().sum() > 0 and local[far].abs().sum() == 0
    assert change(net, x, corner)[far].amin() > 1e-13  # about 3e-11: decays through the untrained RNN


@pytest.mark.parametrize(
    "net, shape",
    [
        (ReNet2d(3, 4), (2, 3, 5, 7)),
        (ReNet2d(3, 4, cell="lstm"), (1, 3, 6, 3)),
        (ReNet3d(3, 4, out_channels=2), (1, 3, 3, 5, 4)),
        (ConvGRU(3, 4), (1, 3, 5, 4, 3)),
        (ConvGRU(3, 4, bidirectional=False), (1, 3, 5, 4, 3)),
        (FCN(2, 1, 3, features=FEATURES, context=ReNet2d(FEATURES[-1], 8)), (1, 1, 37, 41)),
    ],
)
def test_torchscript_matches_eager(net, shape):
    torch.manual_seed(0)
    net = randomise_projection(net).eval()  # not the identity, so the recurrent path is compared too
    scripted = torch.jit.script(net)
    x = torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_untrained_sweep_remembers_across_a_long_line(cell):
    """The memory gate starts open (+1 per bias vector): a change 60 positions away still reaches the far end."""
    torch.manual_seed(0)
    layer = ReNet2d(4, 8, out_channels=8, cell=cell).eval()  # no residual: the output is the sweeps alone
    for sweep in layer.rnns:
        biases = [p for n, p in sweep.named_parameters() if n.startswith("bias_")]
        assert all(torch.all(b[8:16] == 1.0) for b in biases)
    x = torch.rand(1, 4, 1, 64)
    changed = x.clone()
    changed[..., 0] += 3.0
    with torch.no_grad():
        assert float((layer(changed) - layer(x))[..., -1].abs().max()) > 1e-5
