"""Recurrent context layers: ReNet sweeps over feature maps (Visin et al. 2015, ReSeg 2016) and a convolutional GRU
run across the slices of a stack.

A CNN gives every position a local receptive field; these layers read the feature map as sequences of pixels, so
that after a few sweeps every output position depends on every input position (global context).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

__all__ = ["ReNet", "ReNet2d", "ReNet3d", "ConvGRU"]

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def _init_memory_gate(rnn: nn.Module, hidden_size: int, bias: float = 1.0) -> None:
    """Start the gate that keeps the hidden state (GRU update gate, LSTM forget gate) at ``+bias`` per bias vector.

    With PyTorch's default init the gates sit near 0.5, so an untrained sweep halves what it remembers at every step
    and a change 40 positions away vanishes below float precision; at +1 per vector (+2 in all) the gate starts
    near 0.88 and context carries across a whole feature map from the first step of training (Jozefowicz et al.,
    2015, for the LSTM forget gate). Gate order in the bias vectors: GRU (reset, update, new), LSTM (input,
    forget, cell, output), so the gate is the second block of ``hidden_size`` entries in both.
    """
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("bias_"):
                param[hidden_size : 2 * hidden_size].fill_(bias)


class ReNet(nn.Module):
    """ReNet context module: bidirectional RNN sweeps along every spatial axis in turn, then a 1x1 projection.

    The first sweep reads every line along the last spatial axis (the rows, W) as a sequence, in both directions,
    and concatenates the two hidden states (``2 * hidden_size`` channels); the next sweep does the same along the
    previous axis (the columns, H) on that result, and so on down to the first spatial axis (W, H, then D in 3D).
    After the sweeps every output position has seen the whole input. A 1x1 conv projects ``2 * hidden_size``
    channels to ``out_channels``; the output has the input's spatial size, whatever it is.

    When ``out_channels == in_channels`` (the default) the input is added back, ``out = x + proj(sweeps(x))``, and
    the projection is initialised to zero, so an untrained module is exactly the identity and can be dropped into
    a trained network (e.g. as ``FCN(..., context=ReNet2d(...))``) without changing its output. The inner RNN
    weights then get gradient from the first optimiser step on. Otherwise there is no residual and the projection
    keeps PyTorch's default initialisation.

    The module is TorchScript-scriptable with either cell.

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3; the input is (B, C, *spatial).
        in_channels: input channels.
        hidden_size: hidden size of each direction of each RNN.
        out_channels: output channels, ``in_channels`` by default (with the residual).
        cell: ``"gru"`` or ``"lstm"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        hidden_size: int,
        out_channels: int | None = None,
        cell: str = "gru",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if cell.lower() not in _CELLS:
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}.")
        rnn = _CELLS[cell.lower()]
        out_channels = in_channels if out_channels is None else out_channels
        self.spatial_dims = spatial_dims
        self.residual = out_channels == in_channels
        # sweep k reads the axis spatial_dims - k of the channel-last layout (B, *spatial, C): last axis first
        self.rnns = nn.ModuleList(
            [
                rnn(in_channels if k == 0 else 2 * hidden_size, hidden_size, batch_first=True, bidirectional=True)
                for k in range(spatial_dims)
            ]
        )
        for sweep in self.rnns:
            _init_memory_gate(sweep, hidden_size)
        self.proj = Conv[Conv.CONV, spatial_dims](2 * hidden_size, out_channels, kernel_size=1)
        if self.residual:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.movedim(1, -1)  # (B, *spatial, C)
        for k, rnn in enumerate(self.rnns):
            axis = self.spatial_dims - k
            y = y.movedim(axis, -2)  # (..., L, C): the swept axis next to the channels
            shape = list(y.shape)
            lines = 1
            for size in shape[:-2]:
                lines *= size
            out, _ = rnn(y.reshape(lines, shape[-2], shape[-1]).contiguous())
            y = out.reshape(shape[:-1] + [out.shape[-1]]).movedim(-2, axis)
        y = self.proj(y.movedim(-1, 1))
        return x + y if self.residual else y


class ReNet2d(ReNet):
    """ReNet on (B, C, H, W) maps: a bidirectional sweep along every row, then along every column, then 1x1 conv.

    See :class:`ReNet` for the residual and the zero-initialised projection.
    """

    def __init__(self, in_channels: int, hidden_size: int, out_channels: int | None = None, cell: str = "gru") -> None:
        super().__init__(2, in_channels, hidden_size, out_channels, cell)


class ReNet3d(ReNet):
    """ReNet on (B, C, D, H, W) volumes: bidirectional sweeps along W, then H, then D, then a 1x1x1 conv.

    See :class:`ReNet` for the residual and the zero-initialised projection.
    """

    def __init__(self, in_channels: int, hidden_size: int, out_channels: int | None = None, cell: str = "gru") -> None:
        super().__init__(3, in_channels, hidden_size, out_channels, cell)


class _ConvGRUSweep(nn.Module):
    """One direction of a convolutional GRU, run forward along the last axis of (B, C, *spatial, S).

    The input-to-hidden convolutions of all slices are computed in one batched call; only the hidden-to-hidden
    convolutions run slice by slice. Returns the hidden states of every slice, (B, hidden_channels, *spatial, S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int, kernel_size: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        padding = kernel_size // 2
        self.hidden_channels = hidden_channels
        self.x2h = conv(in_channels, 3 * hidden_channels, kernel_size, padding=padding)  # reset, update, candidate
        self.h2gates = conv(hidden_channels, 2 * hidden_channels, kernel_size, padding=padding, bias=False)
        self.h2candidate = conv(hidden_channels, hidden_channels, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape)
        slices = x.movedim(-1, 1).reshape([shape[0] * shape[-1], shape[1]] + shape[2:-1])
        xs = self.x2h(slices)
        xs = xs.reshape([shape[0], shape[-1], 3 * self.hidden_channels] + shape[2:-1])
        h = torch.zeros([shape[0], self.hidden_channels] + shape[2:-1], dtype=x.dtype, device=x.device)
        states: list[torch.Tensor] = []
        for t in range(shape[-1]):
            xr, xz, xn = xs[:, t].chunk(3, 1)
            hr, hz = self.h2gates(h).chunk(2, 1)
            reset = torch.sigmoid(xr + hr)
            update = torch.sigmoid(xz + hz)
            candidate = torch.tanh(xn + self.h2candidate(reset * h))
            h = (1 - update) * h + update * candidate
            states.append(h)
        return torch.stack(states, dim=-1)


class ConvGRU(nn.Module):
    """Convolutional GRU run across the slices of a stack, so that neighbouring slices of a slice-by-slice
    segmentation share information.

    The input is (B, C, H, W, S): 2D feature maps of ``S`` slices stacked along the last axis. A GRU whose gates are
    ``kernel_size`` convolutions (Shi et al. 2015; Ballas et al. 2016) reads the slices in order, starting from a
    zero hidden state.

    - ``bidirectional=False``: returns the hidden state after each slice, (B, hidden_channels, H, W, S); the output
      at slice ``s`` depends on slices ``0 .. s`` only.
    - ``bidirectional=True``: a second GRU reads the slices in reverse; the two hidden states (2 * hidden_channels)
      are projected back to ``in_channels`` by a 1x1 conv and added to the input, (B, in_channels, H, W, S). As in
      :class:`ReNet`, the projection is initialised to zero, so the untrained module is the identity.

    Any number of slices works, one included. The module is TorchScript-scriptable.

    Args:
        in_channels: input channels.
        hidden_channels: hidden channels of each direction.
        kernel_size: odd side of the gate convolutions.
        bidirectional: also read the slices in reverse, then project with a residual (see above).
        spatial_dims: spatial dimensions of each slice, 2 by default; the input is (B, C, *spatial, S).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        bidirectional: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}.")
        self.bidirectional = bidirectional
        self.forward_sweep = _ConvGRUSweep(spatial_dims, in_channels, hidden_channels, kernel_size)
        self.backward_sweep = (
            _ConvGRUSweep(spatial_dims, in_channels, hidden_channels, kernel_size) if bidirectional else nn.Identity()
        )
        # a 1x1 conv over channels of (B, 2 * hidden, N) with all positions and slices flattened into N
        self.proj = nn.Conv1d(2 * hidden_channels, in_channels, kernel_size=1) if bidirectional else nn.Identity()
        if bidirectional:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_sweep(x)
        if not self.bidirectional:
            return y
        y = torch.cat([y, self.backward_sweep(x.flip(-1)).flip(-1)], dim=1)
        shape = y.shape
        y = self.proj(y.reshape(shape[0], shape[1], -1))
        return x + y.reshape(x.shape)
