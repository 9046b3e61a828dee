"""The nested-MoE neural operator (after NESTOR): a plain ``nn.Module``, no Lightning.

Fields are cut into patches; patch tokens carry Fourier features of their physical position
in [0, 1]^d; the backbone alternates a spectral (Fourier), attention or hybrid token mixer
with a nested MoE: per sample, a group of experts is chosen (trained to match the PDE family
when family labels are known); per token, the top-k experts of that group plus the group's
shared expert. A linear head maps tokens back to patches.

Resolution: the operator computes on its training grid (``resolution``). A field on another
grid is resampled to it and the prediction back, spectrally for periodic families (exact for
fields whose modes the training grid resolves) and (bi)linearly otherwise (darcy); the
pointwise skip path runs on the native grid. So a model trained at 32x32 predicts at 64x64 (or
30x22) with the accuracy of its 32x32 grid plus the resampling error.

Parameter-conditioned Fourier channels (``conditioned_channels > 0``): the spectral mixer's
weights are fixed, and the PDE parameters enter only as constant input maps, so no layer can
multiply the field's spectrum by a factor that depends on a parameter. The solution operator
of a constant-coefficient linear PDE is exactly such a factor (advection ``u0^(k) exp(-i k.c
t)``, diffusion ``u0^(k) exp(-nu |k|^2 t)``). :class:`ConditionedFourierChannels` supplies it:
extra input channels ``F^-1[F[u0] exp(-i k.b(p) - |k|^2 D(p))]`` with drift ``b`` and
diffusivity ``D`` predicted per sample from the parameter channels ``p``; they are computed on
the native grid (exact at any resolution) and reach both the operator and the skip path.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.settings import MoESettings


def spectral_resample(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Resample periodic fields between cell-centred grids on their last ``len(size)`` axes, exactly
    for band-limited fields: Fourier modes below both grids' Nyquist frequency are kept (with
    the half-cell phase shift of each grid), the others dropped."""
    d = len(size)
    y = x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    for axis, m in zip(range(x.ndim - d, x.ndim), size):
        n = y.shape[axis]
        if n == m:
            continue
        c = torch.fft.fft(y, dim=axis, norm="forward")
        k = torch.fft.fftfreq(n, 1.0 / n, device=x.device, dtype=torch.float64)
        keep = min(n, m)
        # modes |k| < keep/2 survive; a Nyquist mode of an even grid is ambiguous, so it is dropped
        mask = k.abs() < keep / 2
        shape = [1] * y.ndim
        shape[axis] = n
        phase = torch.exp(-1j * math.pi * k / n) * mask
        c = c * phase.view(shape).to(c.dtype)
        k_out = torch.fft.fftfreq(m, 1.0 / m, device=x.device, dtype=torch.float64)
        out = torch.zeros(*y.shape[:axis], m, *y.shape[axis + 1:], dtype=c.dtype, device=x.device)
        src = torch.nonzero(mask).squeeze(1)
        dst = torch.remainder(k[src], m).long()
        out.index_copy_(axis, dst, c.index_select(axis, src))
        shape[axis] = m
        out = out * torch.exp(1j * math.pi * k_out / m).view(shape).to(c.dtype)
        y = torch.fft.ifft(out, dim=axis, norm="forward")
    return y.real.to(x.dtype)


def fourier_positions(grid: tuple[int, ...], patch: int, resolution: tuple[int, ...], num_freqs: int,
                      device: torch.device) -> torch.Tensor:
    """sin/cos features of patch-centre coordinates in [0, 1]^d: ``[prod(grid), 2 * d * num_freqs]``."""
    axes = [(torch.arange(g, device=device) * patch + patch / 2) / r for g, r in zip(grid, resolution)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
    freqs = 2 * math.pi * torch.arange(1, num_freqs + 1, device=device)
    angles = coords.unsqueeze(-1) * freqs  # [N, d, F]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(coords.shape[0], -1)


def _wavenumbers(size: list[int], device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Angular wavenumbers ``2 pi n`` of the unit domain per axis, shaped for an ``rfftn`` spectrum
    of ``size``, and a 0/1 mask of that spectrum that drops the Nyquist mode of even axes (a real
    field cannot carry its translated phase)."""
    ks, keep = [], torch.ones((), device=device)
    for axis, n in enumerate(size):
        last = axis == len(size) - 1
        f = torch.fft.rfftfreq(n, 1.0 / n, device=device) if last else torch.fft.fftfreq(n, 1.0 / n, device=device)
        shape = [1] * len(size)
        shape[axis] = -1
        ks.append(2 * math.pi * f.view(shape))
        keep = keep * (f.abs() != n / 2).float().view(shape)
    return ks, keep


class ConditionedFourierChannels(nn.Module):
    """``channels`` copies of the field (input channel 0), each filtered by its own per-sample
    Fourier multiplier ``exp(-i k.b - |k|^2 D)``: a translation by ``b`` and a diffusion by ``D``.

    ``b`` (``spatial_dims`` numbers) and ``log D`` per channel are a linear map plus a small MLP
    of the sample's parameter vector (the spatial mean of input channels 1.., which the
    datamodule fills with constant parameter maps). Wavenumbers are those of the unit domain,
    so the same ``b``, ``D`` act alike on any grid. A field of one channel (no parameters) gets
    a learned constant ``b``, ``D``.

    Args:
        spatial_dims: 1 or 2. num_params: parameter channels (input channels minus 1).
        channels: filtered copies produced. hidden: MLP width.
    """

    def __init__(self, spatial_dims: int, num_params: int, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.spatial_dims, self.channels, self.num_params = spatial_dims, channels, num_params
        n_in, n_out = max(num_params, 1), channels * (spatial_dims + 1)
        self.linear = nn.Linear(n_in, n_out)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))
        # Start as the identity: no translation (a random initial drift would shift every family's
        # field, and the loss is periodic in the drift, so a far-off start can stall) and
        # D = exp(-9), which barely damps the data's modes.
        for layer in (self.linear, self.mlp[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.linear.bias.view(channels, spatial_dims + 1)[:, -1] = -9.0

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``[B, channels, spatial_dims]`` and diffusivity ``[B, channels]`` of ``x``."""
        B = x.shape[0]
        if self.num_params:
            p = x[:, 1:1 + self.num_params].float().mean(dim=tuple(range(2, x.ndim)))
        else:
            p = x.new_zeros(B, 1, dtype=torch.float32)
        coef = (self.linear(p) + self.mlp(p)).view(B, self.channels, self.spatial_dims + 1)
        # clamped: exp overflow on a wild parameter would give inf * 0 = NaN in the spectrum
        return coef[..., :-1], coef[..., -1].clamp(max=10.0).exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = list(x.shape[2:])
        axes = tuple(range(2, 2 + self.spatial_dims))
        drift, diff = self.coefficients(x)
        spec = torch.fft.rfftn(x[:, :1].float(), dim=axes)  # [B, 1, *spectrum]
        ks, keep = _wavenumbers(size, x.device)
        extra = (1,) * self.spatial_dims
        phase = sum(drift[..., i].view(*drift.shape[:2], *extra) * k for i, k in enumerate(ks))
        k2 = sum(k**2 for k in ks)
        log_mult = torch.complex(-diff.view(*diff.shape, *extra) * k2, -phase)
        out = torch.fft.irfftn(spec * torch.exp(log_mult) * keep, s=size, dim=axes)
        return out.to(x.dtype)


class NestedMoEOperator(nn.Module):
    """``[B, C_in, *grid] -> [B, C_out, *grid]`` neural operator; see the module docstring.

    Args:
        in_channels: input field channels. out_channels: output field channels.
        spatial_dims: 1 or 2. patch_size: grid points per patch side.
        dim: token width. depth: backbone blocks. num_heads: attention heads (attention/hybrid mixers).
        hidden_dim: expert hidden width.
        moe: the MoE settings of every block; ``moe.dense`` gives the dense baseline: every MoE FFN
            replaced by a dense FFN of hidden width ``(top_k + 1) * hidden_dim`` (the active width of
            a token under the nested router: k routed experts and the group's shared one).
        mixer: ``"spectral"``, ``"attention"`` or ``"hybrid"``. modes: Fourier modes of the spectral mixer.
        resolution: grid points per axis the operator computes on (None: the input's own grid).
        num_freqs: Fourier frequencies of the position features.
        conditioned_channels: parameter-conditioned Fourier channels (:class:`ConditionedFourierChannels`)
            appended to the input; 0: none (the operator as released before they existed).
    """

    def __init__(self, *, in_channels: int, out_channels: int, spatial_dims: int, patch_size: int, dim: int,
                 depth: int, num_heads: int, hidden_dim: int, moe: MoESettings, mixer: str, modes: int,
                 resolution: int | None = None, num_freqs: int = 8, conditioned_channels: int = 0) -> None:
        super().__init__()
        self.spatial_dims, self.patch, self.num_freqs = spatial_dims, patch_size, num_freqs
        self.resolution = resolution
        self.in_channels, self.out_channels = in_channels, out_channels
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        self.condition = (ConditionedFourierChannels(spatial_dims, in_channels - 1, conditioned_channels)
                          if conditioned_channels else None)
        in_channels = in_channels + conditioned_channels
        self.embed = conv(in_channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Linear(2 * spatial_dims * num_freqs, dim)
        mixer_options = {"spectral": {"modes": modes, "spatial_dims": spatial_dims},
                         "attention": {"num_heads": num_heads},
                         "hybrid": {"num_heads": num_heads, "modes": modes, "spatial_dims": spatial_dims}}[mixer]
        block = BlockSpec(mixer=mixer, mixer_options=mixer_options, hidden_dim=hidden_dim,
                          dense_hidden_dim=(moe.top_k + 1) * hidden_dim, **moe.block_fields())
        self.backbone = MultimodalMoEBackbone(["field"], dim=dim, blocks=[block] * depth, positions=False)
        self.head = nn.Linear(dim, out_channels * patch_size**spatial_dims)
        self.skip = conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, resample: Literal["linear", "spectral"] | torch.Tensor = "linear"
                ) -> torch.Tensor:
        """``x [B, C_in, *grid]`` -> ``[B, C_out, *grid]``. ``resample``: how a grid other than
        ``resolution`` is brought to it and back: ``"spectral"`` (exact for band-limited periodic
        fields), ``"linear"`` ((bi)linear, for non-periodic ones) or a bool ``[B]`` (True: spectral)."""
        if self.condition is not None:  # on the native grid, before any resampling
            x = torch.cat([x, self.condition(x)], dim=1)
        size = list(x.shape[2:])
        work = [self.resolution] * self.spatial_dims if self.resolution else size
        if work == size:
            return self._operator(x) + self.skip(x)
        if isinstance(resample, str):
            resample = torch.full((x.shape[0],), resample == "spectral", device=x.device)
        spectral = resample.view(-1, *([1] * (x.ndim - 1)))
        mode = "linear" if self.spatial_dims == 1 else "bilinear"

        def to(t: torch.Tensor, grid: list[int]) -> torch.Tensor:  # both ways, chosen per sample
            return torch.where(spectral, spectral_resample(t, grid),
                               F.interpolate(t, size=grid, mode=mode, align_corners=False))

        return to(self._operator(to(x, work)), size) + self.skip(x)

    def _operator(self, x: torch.Tensor) -> torch.Tensor:
        B, _, *size = x.shape
        p, d = self.patch, self.spatial_dims
        pad = [(-s) % p for s in size]
        if any(pad):  # pad to whole patches; the padding is cropped off the output
            x_in = F.pad(x, [v for s in reversed(pad) for v in (0, s)], mode="replicate")
        else:
            x_in = x
        tokens = self.embed(x_in)  # [B, dim, *grid]
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = self.pos(fourier_positions(grid, p, tuple(size), self.num_freqs, x.device)).unsqueeze(0)
        out = self.backbone({"field": tokens}, positions={"field": pos}, grid=grid)["field"]
        patches = self.head(out)  # [B, N, C_out * p^d]
        if d == 1:
            y = patches.view(B, grid[0], self.out_channels, p).permute(0, 2, 1, 3).reshape(B, self.out_channels, -1)
        else:
            y = patches.view(B, grid[0], grid[1], self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
            y = y.reshape(B, self.out_channels, grid[0] * p, grid[1] * p)
        return y[(...,) + tuple(slice(0, s) for s in size)]
