"""WaveletMoERestorer: all-in-one image restoration with wavelet-domain experts (after OmniLight)
and MoE-in-MoE routing (after MiM-DiT); a plain ``nn.Module``, no Lightning.

Layout (H and W multiples of 4)::

    x -> stem 3x3 -> ConvBlocks (1/1) -e0-> Haar DWT -> 1x1 -> ConvBlocks (1/2) -e1-> Haar DWT (1/4)
         LL band        -> tokens "low"  -+-> MultimodalMoEBackbone -> + LL band
         LH, HL, HH     -> tokens "high" -+                         -> + high bands
                        -> high-band conv expert of the image's group -> + high bands
      -> Haar IDWT -> ConvBlocks (1/2) -> 1x1 -> Haar IDWT -> + e0 -> ConvBlocks (1/1) -> 3x3 -> x + delta

Design choices:

* The orthonormal Haar DWT is the down-sampling and its inverse the up-sampling: nothing is
  lost on the way down, and the inner stage adds residuals to the bands, so bands it leaves
  alone come back exactly (the inner skip connection is the identity in the wavelet domain).
* Low-band (LL: colour, illumination, haze) and high-band (LH/HL/HH: noise, rain streaks,
  edges) tokens both enter the shared backbone, as the modalities ``"low"`` and ``"high"``, so
  the routers, capacity (MACS) and routing stats see the band mix. Its MoE FFNs use a nested
  router: per image an expert group (trained to match the degradation type), per token the
  top-k experts of that group plus the group's shared expert (MoE in MoE).
* High-band convolutional experts, one per group, are picked by the same per-image decision
  (the mean over the MoE layers of their group logits) and scaled by its probability, so a
  group is one degradation's whole expert bundle: its token experts and its conv expert. A
  separate conv-expert router was left out: it would add a second decision to train and to
  keep consistent across tiles. The conv experts are 3x3 depthwise convolutions dilated
  1, 2, 3: receptive fields 3, 5, 7 (``receptive_fields``, cycled over the groups) with equal
  parameter counts, so an image's active parameters do not depend on its group and the dense
  baseline matches them exactly (real 5x5 / 7x7 kernels would not).
* ``moe=False`` is the dense baseline with the same active parameters per token: each MoE FFN
  becomes a dense FFN of width ``(top_k + 1) * hidden_dim`` (k routed + the shared expert) and
  the conv experts one conv expert (the middle receptive field).
* Tiled inference (:meth:`WaveletMoERestorer.restore_tiled`) takes the degradation decision
  once per image: a first pass over the tiles gives each MoE layer's group logits per tile,
  their mean over tiles is imposed on every tile in the second pass (the router
  ``"nested_image"`` is ``"nested"`` with that override), keeping native-resolution statistics
  (noise level) that a down-scaled whole-image pass would blur away.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, Mlp
from torch import nn

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.mixers import register_mixer
from mmoe.moe_layer import MoELayer
from mmoe.routers import NestedRouter, register_router
from mmoe.progress import predict_progress
from mmoe.settings import MoESettings, require_router
from mmoe.validation import check_choice, check_number, check_positive_int


# ----------------------------------------------------------------------------- Haar wavelets
def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal 2-D Haar DWT ``[B, C, H, W] -> (LL [B, C, H/2, W/2], high [B, 3C, H/2, W/2])``.

    ``high`` holds (LH, HL, HH) of channel 0, then of channel 1, ... H and W must be even.
    """
    B, C, H, W = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"x: the Haar DWT needs even sides, got {H}x{W}")
    x = x.view(B, C, H // 2, 2, W // 2, 2)
    a, b, c, d = x[:, :, :, 0, :, 0], x[:, :, :, 0, :, 1], x[:, :, :, 1, :, 0], x[:, :, :, 1, :, 1]
    ll = (a + b + c + d) / 2
    lh = (a + b - c - d) / 2  # difference of rows: horizontal edges
    hl = (a - b + c - d) / 2  # difference of columns: vertical edges
    hh = (a - b - c + d) / 2
    return ll, torch.stack([lh, hl, hh], dim=2).flatten(1, 2)


def haar_idwt(ll: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`: ``(LL [B, C, h, w], high [B, 3C, h, w]) -> [B, C, 2h, 2w]``."""
    B, C, h, w = ll.shape
    lh, hl, hh = high.reshape(B, C, 3, h, w).unbind(2)
    a = (ll + lh + hl + hh) / 2
    b = (ll + lh - hl - hh) / 2
    c = (ll - lh + hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    rows = torch.stack([torch.stack([a, b], dim=-1), torch.stack([c, d], dim=-1)], dim=3)  # [B, C, h, 2, w, 2]
    return rows.reshape(B, C, 2 * h, 2 * w)


# ------------------------------------------------------------------- router and token mixer
@register_router("nested_image", replace=True)
class ImageNestedRouter(NestedRouter):
    """The ``"nested"`` router whose per-image group logits can be imposed.

    While ``forced_logits [B, G]`` is set, the group choice and gate come from it instead of
    the pooled features (tiled inference: one decision per image for all its tiles); the token
    top-k inside the group is unchanged.

    Args:
        groups: number of expert groups G (see :class:`mmoe.routers.NestedRouter`).
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, groups: int = 2) -> None:
        super().__init__(dim, num_experts, top_k, groups)
        self.forced_logits: torch.Tensor | None = None

    def group_logits(self, x: torch.Tensor, sample: torch.Tensor, num_samples: int) -> torch.Tensor:
        if self.forced_logits is None:
            return super().group_logits(x, sample, num_samples)
        if self.forced_logits.shape != (num_samples, self.groups):
            raise ValueError(f"forced_logits: expected shape {(num_samples, self.groups)}, "
                             f"got {tuple(self.forced_logits.shape)}")
        return self.forced_logits.float()


@register_mixer("band_dwconv")
class BandConvMixer(nn.Module):
    """Depthwise convolution over each modality's token grid (one grid per wavelet band group).

    Tokens ``[B, M * h * w, dim]`` are ``M`` modalities laid out on ``grid = (h, w)``; the same
    depthwise kernel mixes each of them spatially (local, any grid size, no positions needed).

    Args:
        dim: token width.
        kernel_size: odd kernel side.
    """

    uses_grid = True

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd number, got {kernel_size}")
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        if grid is None or len(grid) != 2 or N % (grid[0] * grid[1]):
            raise ValueError(f"grid: expected (h, w) with N={N} a multiple of h * w, got {grid}")
        h, w = grid
        y = self.conv(x.reshape(B * (N // (h * w)), h, w, D).permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1).reshape(B, N, D)


# ------------------------------------------------------------------------------- conv parts
class ConvBlock(nn.Module):
    """ConvNeXt-style block: ``x + dwconv3x3(norm(x))`` then ``x + mlp(norm(x))`` (1x1 convs).

    Args:
        channels: feature channels.
        mlp_ratio: hidden width of the channel MLP over ``channels``.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, channels: int, mlp_ratio: float = 2.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(channels), LayerNorm2d(channels)
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.mlp = Mlp(channels, int(channels * mlp_ratio), use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.dwconv(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HighBandExpert(nn.Module):
    """A high-band conv expert: norm -> 3x3 depthwise conv dilated ``(receptive_field - 1) / 2`` -> GELU -> 1x1.

    Args:
        channels: channels of the stacked high bands (3 x features).
        receptive_field: 3, 5, 7, ... (odd): the dilated kernel's span.
    """

    def __init__(self, channels: int, receptive_field: int) -> None:
        super().__init__()
        if isinstance(receptive_field, bool) or not isinstance(receptive_field, int) or receptive_field < 3 \
                or receptive_field % 2 == 0:
            raise ValueError(f"receptive_fields: expected odd ints >= 3, got {receptive_field!r}")
        dilation = (receptive_field - 1) // 2
        self.receptive_field = receptive_field
        self.norm = LayerNorm2d(channels)
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels)
        self.pwconv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv(F.gelu(self.dwconv(self.norm(x))))


def _tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Tile origins along one axis: steps of ``tile - overlap`` rounded down to ``multiple`` (so
    every tile sees the same wavelet phase), the last tile flush with the end."""
    if length <= tile:
        return [0]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    return list(range(0, length - tile, step)) + [length - tile]


def _blend_weights(start: int, size: int, length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Linear ramps ``(1 .. overlap) / (overlap + 1)`` on the tile sides that face another tile: ``[size]``."""
    w = torch.ones(size, device=device)
    if overlap:
        ramp = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
        if start > 0:
            w[:overlap] = ramp
        if start + size < length:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
    return w


# ------------------------------------------------------------------------------------ model
#: the recipe's MoE: per image one of 3 groups (3 experts each, the last shared), top-1 inside it
RESTORATION_MOE = MoESettings(router="nested_image", groups=3, num_experts=9, top_k=1)


class WaveletMoERestorer(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] -> restored ``[B, 3, H, W]`` (``x + delta``, not clamped); see the module docstring.

    After a forward, :attr:`last_logits` holds the per-image degradation decision (``[B, G]``,
    the mean over MoE layers of their group logits; None for the dense baseline) and
    :meth:`group_logits` each MoE layer's group logits (for the auxiliary degradation loss).

    Args:
        moe: the MoE settings of the backbone blocks: ``moe.groups`` expert groups G, one chosen per
            image (the degradation types), by the ``nested_image`` router; ``moe.dense`` gives the dense
            baseline with the same active parameters per token.
        channels: feature channels at full resolution (twice as many at 1/2).
        dim: token width of the backbone.
        depth: backbone blocks.
        hidden_dim: hidden width of each FFN expert.
        conv_blocks: ConvBlocks per stage (two stages at 1/1 and two at 1/2).
        mixer: backbone token mixer: ``"band_dwconv"`` (local, per band grid) or ``"attention"`` (global).
        num_heads: attention heads (``mixer="attention"``).
        receptive_fields: receptive fields of the high-band conv experts, cycled over the groups.
        drop_path: stochastic-depth rate of the ConvBlocks.
    """

    #: H and W must be multiples of this (two Haar levels)
    multiple = 4

    def __init__(self, *, moe: MoESettings = RESTORATION_MOE, channels: int = 32, dim: int = 64, depth: int = 2,
                 hidden_dim: int = 128, conv_blocks: int = 1,
                 mixer: Literal["band_dwconv", "attention"] = "band_dwconv", num_heads: int = 4,
                 receptive_fields: tuple[int, ...] = (3, 5, 7), drop_path: float = 0.0) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("dim", dim), ("depth", depth), ("hidden_dim", hidden_dim),
                            ("conv_blocks", conv_blocks), ("num_heads", num_heads)):
            check_positive_int(name, value)
        require_router(moe, ("nested_image",), "restoration",
                       "the per-image degradation decision picks the conv experts and is imposed on every tile")
        check_choice("mixer", mixer, ("band_dwconv", "attention"))
        check_number("drop_path", drop_path)
        self.dense = moe.dense
        num_groups = moe.groups
        if not receptive_fields:
            raise ValueError("receptive_fields: expected at least one receptive field, got none")
        c0, c1 = channels, 2 * channels
        self.num_groups = num_groups

        def stage(c: int) -> nn.Sequential:
            return nn.Sequential(*(ConvBlock(c, drop_path=drop_path) for _ in range(conv_blocks)))

        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.enc0, self.down, self.enc1 = stage(c0), nn.Conv2d(4 * c0, c1, 1), stage(c1)
        self.low_in, self.high_in = nn.Conv2d(c1, dim, 1), nn.Conv2d(3 * c1, dim, 1)
        block = BlockSpec(
            mixer=mixer, mixer_options={"num_heads": num_heads} if mixer == "attention" else {},
            hidden_dim=hidden_dim, dense_hidden_dim=(moe.top_k + 1) * hidden_dim, **moe.block_fields())
        self.backbone = MultimodalMoEBackbone(["low", "high"], dim=dim, blocks=[block] * depth, positions=False)
        self.low_out, self.high_out = nn.Linear(dim, c1), nn.Linear(dim, 3 * c1)
        fields = [receptive_fields[g % len(receptive_fields)] for g in range(num_groups)] if not self.dense \
            else [receptive_fields[len(receptive_fields) // 2]]
        self.high_experts = nn.ModuleList(HighBandExpert(3 * c1, r) for r in fields)
        self.dec1, self.up, self.dec0 = stage(c1), nn.Conv2d(c1, 4 * c0, 1), stage(c0)
        self.head = nn.Conv2d(c0, 3, 3, padding=1)
        with torch.no_grad():  # a small initial delta: training starts near the identity
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.last_logits: torch.Tensor | None = None

    def moe_layers(self) -> list[MoELayer]:
        return [m for m in self.backbone.modules() if isinstance(m, MoELayer)]

    def group_logits(self) -> list[torch.Tensor]:
        """Each MoE layer's per-image group logits ``[B, G]`` of the last forward (empty when dense)."""
        return [m.last_sample_logits for m in self.moe_layers() if m.last_sample_logits is not None]

    def forward(self, x: torch.Tensor, group_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Restore ``x [B, 3, H, W]``.

        Args:
            x: degraded images in [0, 1], H and W multiples of :attr:`multiple`.
            group_logits: per-image group logits to impose instead of deciding: ``[B, G]`` for
                every MoE layer or ``[L, B, G]`` per layer (tiled inference); None decides.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ValueError(f"x: expected [B, 3, H, W] with H, W multiples of {self.multiple}, got {tuple(x.shape)}")
        e0 = self.enc0(self.stem(x))
        e1 = self.enc1(self.down(torch.cat(haar_dwt(e0), dim=1)))
        ll, high = haar_dwt(e1)
        B, _, h, w = ll.shape
        tokens = {"low": self.low_in(ll).flatten(2).transpose(1, 2),
                  "high": self.high_in(high).flatten(2).transpose(1, 2)}
        routers = [m.router for m in self.moe_layers()]
        if group_logits is not None and routers:
            forced = group_logits if group_logits.ndim == 3 else group_logits.expand(len(routers), -1, -1)
            if forced.shape[0] != len(routers):
                raise ValueError(f"group_logits: expected [B, G] or [{len(routers)}, B, G], "
                                 f"got {tuple(group_logits.shape)}")
            for router, logits in zip(routers, forced):
                router.forced_logits = logits
        try:
            out = self.backbone(tokens, grid=(h, w))
        finally:
            for router in routers:
                router.forced_logits = None
        layer_logits = self.group_logits()
        self.last_logits = torch.stack(layer_logits).mean(0) if layer_logits else None
        ll = ll + self.low_out(out["low"]).transpose(1, 2).reshape(B, -1, h, w)
        high = high + self.high_out(out["high"]).transpose(1, 2).reshape(B, -1, h, w) + self._high_experts(high)
        d1 = self.dec1(haar_idwt(ll, high))
        up = self.up(d1)
        c0 = up.shape[1] // 4
        d0 = self.dec0(haar_idwt(up[:, :c0], up[:, c0:]) + e0)
        return x + self.head(d0)

    def _high_experts(self, high: torch.Tensor) -> torch.Tensor:
        """Each image's group conv expert on its high bands, times the group's probability."""
        if self.last_logits is None:  # dense baseline: its one conv expert
            return self.high_experts[0](high)
        gate, choice = torch.softmax(self.last_logits.float(), dim=-1).max(dim=-1)
        out = torch.zeros_like(high)
        for g, expert in enumerate(self.high_experts):
            idx = (choice == g).nonzero().squeeze(1)  # only the images of group g are computed
            out = out.index_add(0, idx, expert(high[idx]) * gate[idx, None, None, None].to(high.dtype))
        return out

    @torch.no_grad()
    def restore_tiled(self, x: torch.Tensor, tile: int, overlap: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Restore ``x [B, 3, H, W]`` in overlapping ``tile`` x ``tile`` tiles, blended linearly.

        The degradation decision is taken once per image: the mean over tiles of each MoE
        layer's group logits (first pass) is imposed on all tiles (second pass). When the image
        fits in one tile this is exactly ``self(x)``. Returns ``(restored, decision logits [B, G]
        or None)``.

        Args:
            x: degraded images in [0, 1], sides multiples of :attr:`multiple`.
            tile: tile side (a multiple of :attr:`multiple`).
            overlap: overlap of neighbouring tiles in pixels (at least: steps are rounded down to
                :attr:`multiple`).
        """
        check_positive_int("tile", tile)
        check_positive_int("overlap", overlap, minimum=0)
        if tile % self.multiple or overlap >= tile:
            raise ValueError(f"tile/overlap: expected tile a multiple of {self.multiple} and overlap < tile, "
                             f"got tile={tile}, overlap={overlap}")
        B, _, H, W = x.shape
        th, tw = min(tile, H), min(tile, W)
        if (th, tw) == (H, W):
            y = self(x)
            return y, self.last_logits
        tiles = [(i, j) for i in _tile_starts(H, th, overlap, self.multiple)
                 for j in _tile_starts(W, tw, overlap, self.multiple)]
        forced = None
        bar = predict_progress(len(tiles) * (1 if self.dense else 2), "restoring tiles")
        if not self.dense:
            total = 0
            for i, j in tiles:
                self(x[..., i:i + th, j:j + tw])
                total = total + torch.stack(self.group_logits())
                bar.update()
            forced = total / len(tiles)  # [L, B, G]: tiles have equal sizes, a plain mean
        out, weight = torch.zeros_like(x), x.new_zeros(1, 1, H, W)
        for i, j in tiles:
            wy = _blend_weights(i, th, H, overlap, x.device)
            wx = _blend_weights(j, tw, W, overlap, x.device)
            w = (wy[:, None] * wx[None, :]).to(x.dtype)
            out[..., i:i + th, j:j + tw] += self(x[..., i:i + th, j:j + tw], forced) * w
            weight[..., i:i + th, j:j + tw] += w
            bar.update()
        bar.close()
        return out / weight, self.last_logits
