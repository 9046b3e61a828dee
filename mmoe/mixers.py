"""Token mixers of the backbone blocks, selectable by name through :data:`MIXERS`.

A mixer is built as ``MIXERS[name](dim=dim, **mixer_options)`` (see :func:`build_mixer`): its
options are its own keyword arguments, with defaults. It is called as
``mixer(x [B, N, dim], grid, attn_mask=None)``, where ``grid`` is the spatial token grid (or None)
and ``attn_mask [B, 1, N, N]`` (bool, True = may attend) restricts attention; mixers that do
not attend ignore it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmoe.validation import check_choice, check_options, check_positive_int

MIXERS: dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a token mixer selectable by ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        MIXERS[name] = cls
        return cls

    return wrap


def build_mixer(name: str, dim: int, options: Mapping[str, Any] | None = None) -> nn.Module:
    """``MIXERS[name](dim=dim, **options)``, with clear errors.

    Args:
        name: a name from :data:`MIXERS`.
        dim: token width.
        options: the mixer's own keyword options (``mixer_options``), e.g. ``{"num_heads": 4}``.
    """
    check_choice("mixer", name, tuple(MIXERS))
    check_positive_int("dim", dim)
    cls = MIXERS[name]
    options = check_options("mixer_options", options, cls, f"mixer {name!r}", ("dim",))
    try:
        return cls(dim=dim, **options)
    except (TypeError, ValueError) as e:
        error = TypeError if isinstance(e, TypeError) else ValueError
        raise error(f"mixer_options={options!r} for mixer {name!r}: {e}") from e


def _check_spectral(modes: object, spatial_dims: object) -> None:
    check_positive_int("modes", modes)
    if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2):
        raise ValueError(f"spatial_dims: expected 1 or 2, got {spatial_dims!r}")


@register_mixer("attention")
class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of all modalities.

    Args:
        dim: token width.
        num_heads: attention heads (a divisor of ``dim``).
    """

    def __init__(self, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
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
    """No token mixing (per-token MLP stacks).

    Args:
        dim: token width (unused).
    """

    def __init__(self, dim: int) -> None:
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

    Args:
        dim: token width.
        modes: Fourier modes kept per axis.
        spatial_dims: 1 or 2, the number of grid axes.
    """

    uses_grid = True

    def __init__(self, dim: int, modes: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        _check_spectral(modes, spatial_dims)
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
    plus content- and position-dependent routing of information between tokens.

    Args:
        dim: token width.
        num_heads: attention heads (a divisor of ``dim``).
        modes: Fourier modes kept per axis.
        spatial_dims: 1 or 2, the number of grid axes.
    """

    uses_grid = True

    def __init__(self, dim: int, num_heads: int = 4, modes: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spectral = SpectralMixer(dim, modes, spatial_dims)
        self.attention = SelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.spectral(x, grid) + self.attention(x, grid, attn_mask)
