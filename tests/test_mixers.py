"""Token mixers: the spectral mixer is resolution independent and shift equivariant."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from mmoe.mixers import MIXERS, SpectralMixer, build_mixer


def band_limited(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Sum of random low-frequency waves (|k| <= 2) sampled on an n x n periodic grid: [1, n*n, dim]."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(n) / n
    X, Y = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.zeros(n, n, dim)
    for _ in range(4):
        kx, ky = torch.randint(-2, 3, (2,), generator=g).tolist()
        amp = torch.randn(dim, generator=g)
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        out += amp * torch.cos(2 * math.pi * (kx * X + ky * Y) + phase).unsqueeze(-1)
    return out.reshape(1, n * n, dim)


def test_spectral_mixer_is_resolution_independent() -> None:
    torch.manual_seed(0)
    mixer = SpectralMixer(6, modes=3, spatial_dims=2)
    coarse = mixer(band_limited(8, 6), (8, 8)).view(8, 8, 6)
    fine = mixer(band_limited(16, 6), (16, 16)).view(16, 16, 6)
    torch.testing.assert_close(fine[::2, ::2], coarse, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial_dims,grid", [(1, (12,)), (2, (6, 10))])
def test_spectral_mixer_commutes_with_shifts(spatial_dims: int, grid: tuple) -> None:
    torch.manual_seed(1)
    mixer = SpectralMixer(4, modes=3, spatial_dims=spatial_dims)
    x = torch.randn(2, math.prod(grid), 4)
    axes = tuple(range(1, 1 + spatial_dims))
    shifts = (3,) * spatial_dims
    shifted = torch.roll(x.view(2, *grid, 4), shifts, axes).reshape_as(x)
    a = torch.roll(mixer(x, grid).view(2, *grid, 4), shifts, axes).reshape_as(x)
    torch.testing.assert_close(mixer(shifted, grid), a, rtol=1e-4, atol=1e-5)
    assert mixer(x, grid).abs().max() > 1e-3


def test_spectral_mixer_bad_grid() -> None:
    mixer = MIXERS["spectral"](dim=4, modes=2, spatial_dims=2)
    with pytest.raises(ValueError, match="grid"):
        mixer(torch.randn(1, 10, 4), (3, 3))
    with pytest.raises(ValueError, match="grid"):
        mixer(torch.randn(1, 9, 4), None)


def test_hybrid_mixer_is_spectral_plus_attention() -> None:
    torch.manual_seed(2)
    mixer = MIXERS["hybrid"](dim=8, num_heads=2, modes=2, spatial_dims=2)
    x = torch.randn(2, 12, 8)
    expected = mixer.spectral(x, (3, 4)) + mixer.attention(x, (3, 4))
    torch.testing.assert_close(mixer(x, (3, 4)), expected)


@pytest.mark.parametrize("name,accepted", [("attention", ["num_heads"]), ("identity", []),
                                           ("spectral", ["modes", "spatial_dims"]),
                                           ("hybrid", ["num_heads", "modes", "spatial_dims"])])
def test_mixers_take_only_their_own_keyword_options(name: str, accepted: list) -> None:
    """``MIXERS[name](dim=dim, **mixer_options)``: defaults for every option, no unused arguments."""
    assert list(inspect.signature(MIXERS[name]).parameters) == ["dim", *accepted]
    mixer = build_mixer(name, 8)  # all defaults
    assert mixer(torch.randn(2, 16, 8), (4, 4)).shape == (2, 16, 8)
    with pytest.raises(ValueError, match=rf"mixer_options: mixer '{name}' does not accept \['depth'\]; it accepts"):
        build_mixer(name, 8, {"depth": 2})


def test_build_mixer_passes_options_and_names_bad_ones() -> None:
    assert build_mixer("attention", 8, {"num_heads": 2}).num_heads == 2
    mixer = build_mixer("hybrid", 8, {"num_heads": 2, "modes": 3, "spatial_dims": 1})
    assert (mixer.attention.num_heads, mixer.spectral.modes, mixer.spectral.spatial_dims) == (2, 3, 1)
    with pytest.raises(ValueError, match=r"mixer_options=\{'num_heads': 3\} for mixer 'attention': num_heads"):
        build_mixer("attention", 8, {"num_heads": 3})
    with pytest.raises(TypeError, match="mixer_options: expected a mapping"):
        build_mixer("attention", 8, ["num_heads"])
    with pytest.raises(ValueError, match="mixer: expected one of"):
        build_mixer("conv", 8)
