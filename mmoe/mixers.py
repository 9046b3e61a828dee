"""Token mixers of the backbone blocks, selectable by name through :data:`MIXERS`.

A mixer is built as ``cls(dim=, num_heads=, modes=, spatial_dims=)`` and called as
``mixer(x [B, N, dim], grid, attn_mask=None)``, where ``grid`` is the spatial token grid (or None)
and ``attn_mask [B, 1, N, N]`` (bool, True = may attend) restricts attention; mixers that do
not attend ignore it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MIXERS: dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a token mixer selectable by ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        MIXERS[name] = cls
        return cls

    return wrap


@register_mixer("attention")
class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of all modalities."""

    def __init__(self, dim: int, num_heads: int, modes: int = 0, spatial_dims: int = 0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: expected a divisor of dim={dim}, got {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask) if N else q
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


@register_mixer("identity")
class NoMixer(nn.Module):
    """No token mixing (per-token MLP stacks)."""

    def __init__(self, dim: int, num_heads: int, modes: int = 0, spatial_dims: int = 0) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)


@register_mixer("spectral")
class SpectralMixer(nn.Module):
    """Fourier-space channel mixing on the token grid (an FNO spectral convolution).

    Tokens ``[B, N, dim]`` are laid out on ``grid`` (``N == prod(grid)``), transformed with a
    real FFT, the lowest ``modes`` frequencies per axis are multiplied by learned complex
    ``dim x dim`` matrices (both signs of the first axis in 2D), the rest are zeroed, and the
    result is transformed back. The same weights serve any grid size, so a model trained on
    one resolution runs on another.
    """

    uses_grid = True

    def __init__(self, dim: int, num_heads: int = 1, modes: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims: expected 1 or 2, got {spatial_dims}")
        if modes < 1:
            raise ValueError(f"modes: expected >= 1, got {modes}")
        self.modes, self.spatial_dims = modes, spatial_dims
        shape = (modes,) if spatial_dims == 1 else (2, modes, modes)
        # real view of complex weights (safetensors and every optimizer handle real tensors)
        self.weight = nn.Parameter(torch.randn(*shape, dim, dim, 2) / (dim * 2**0.5))

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        if grid is None or len(grid) != self.spatial_dims or N != torch.Size(grid).numel():
            raise ValueError(f"grid: expected {self.spatial_dims} dims whose product is N={N}, got {grid}")
        w = torch.view_as_complex(self.weight)
        h = x.float().view(B, *grid, D)
        axes = tuple(range(1, 1 + self.spatial_dims))
        spec = torch.fft.rfftn(h, dim=axes, norm="forward")  # grid-size independent coefficients
        out = torch.zeros_like(spec)
        if self.spatial_dims == 1:
            m = min(self.modes, spec.shape[1])
            out[:, :m] = torch.einsum("bmi,mio->bmo", spec[:, :m], w[:m])
        else:
            m1, m2 = min(self.modes, grid[0] // 2 or 1), min(self.modes, spec.shape[2])
            out[:, :m1, :m2] = torch.einsum("bxyi,xyio->bxyo", spec[:, :m1, :m2], w[0, :m1, :m2])
            if grid[0] > 1:
                out[:, -m1:, :m2] = torch.einsum("bxyi,xyio->bxyo", spec[:, -m1:, :m2], w[1, -m1:, :m2])
        y = torch.fft.irfftn(out, s=grid, dim=axes, norm="forward")
        return y.reshape(B, N, D).to(x.dtype)


@register_mixer("hybrid")
class HybridMixer(nn.Module):
    """Spectral and attention mixing in parallel (outputs summed): global Fourier operators
    plus content- and position-dependent routing of information between tokens."""

    uses_grid = True

    def __init__(self, dim: int, num_heads: int, modes: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spectral = SpectralMixer(dim, num_heads, modes, spatial_dims)
        self.attention = SelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.spectral(x, grid) + self.attention(x, grid, attn_mask)
