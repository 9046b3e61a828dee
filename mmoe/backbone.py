"""The multimodal MoE backbone: pre-norm blocks of [token mixer -> MoE (or dense) FFN]."""

from __future__ import annotations

import math
import torch
from torch import nn

from mmoe.experts import DenseFFN
from mmoe.mixers import MIXERS
from mmoe.moe_layer import CAPACITY_MODES, MoELayer
from mmoe.validation import check_choice, check_positive_int, check_tensor

def sinusoidal_positions(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Standard sin/cos positions ``[n, dim]`` (works for any sequence length)."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class MoEBlock(nn.Module):
    """``x + mixer(norm(x))`` then ``x + ffn(norm(x), modality)``."""

    def __init__(self, dim: int, num_heads: int, mixer: str, ffn: nn.Module, modes: int, spatial_dims: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = MIXERS[mixer](dim=dim, num_heads=num_heads, modes=modes, spatial_dims=spatial_dims)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, modality: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep``: flat indices of the real (non-padding) tokens; only they reach the FFN."""
        x = x + self.mixer(self.norm1(x), grid, attn_mask)
        h = self.norm2(x)
        if keep is None:
            return x + (self.ffn(h, modality) if isinstance(self.ffn, MoELayer) else self.ffn(h))
        flat = h.reshape(-1, h.shape[-1]).index_select(0, keep)
        out = self.ffn(flat, modality.reshape(-1).index_select(0, keep)) if isinstance(self.ffn, MoELayer) else self.ffn(flat)
        y = torch.zeros_like(h).reshape(-1, h.shape[-1]).index_copy(0, keep, out.to(h.dtype))
        return x + y.view_as(h)


class MultimodalMoEBackbone(nn.Module):
    """Shared backbone over per-modality token tensors.

    ``forward({name: [B, N_m, dim]}, positions=None, grid=None)`` concatenates the modalities given (any
    subset of ``modalities``), adds a learned modality embedding and positions (sinusoidal
    over each modality's token index, or the task's own ``positions[name]`` broadcastable to
    ``[B, N_m, dim]``), runs ``depth`` blocks with modality ids passed to the MoE layers, and
    returns the tokens split back per modality. ``mask[name] [B, N_m]`` (bool, True = real token)
    marks padding: padded tokens are attended by nobody and never routed (the valid tokens are
    gathered once per forward -- one host sync -- so capacity counts real tokens only; this needs a
    token-level router). With ``cross_modal_attention=False`` tokens attend only to tokens of
    their own modality (unimodal encoders that still share the MoE FFNs). ``grid`` (the spatial token grid, e.g.
    ``(8, 8)``) is handed to grid-aware mixers such as ``"spectral"``.

    ``moe_blocks`` lists the block indices that use a :class:`MoELayer` (None: all); the
    others use a dense FFN of hidden width ``dense_hidden_dim`` (default ``top_k * hidden_dim``,
    the active width of an MoE block).
    """

    def __init__(
        self,
        modalities: list[str],
        dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        hidden_dim: int = 512,
        num_experts: int = 8,
        top_k: int = 2,
        router: str = "softmax",
        capacity_factor: float | None = None,
        capacity_mode: str = "macs",
        num_shared_experts: int = 0,
        moe_blocks: list[int] | None = None,
        mixer: str = "attention",
        activation: str = "swiglu",
        backend: str = "auto",
        load_balance_weight: float = 1e-2,
        z_loss_weight: float = 1e-3,
        soft_slots: int = 1,
        groups: int = 2,
        spectral_modes: int = 8,
        spatial_dims: int = 2,
        positions: bool = True,
        dense_hidden_dim: int | None = None,
        cross_modal_attention: bool = True,
    ) -> None:
        super().__init__()
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: expected a non-empty list of distinct names, got {modalities!r}")
        check_positive_int("depth", depth)
        check_choice("mixer", mixer, tuple(MIXERS))
        check_choice("capacity_mode", capacity_mode, CAPACITY_MODES)
        moe_set = set(range(depth)) if moe_blocks is None else set(moe_blocks)
        if not moe_set <= set(range(depth)):
            raise ValueError(f"moe_blocks: expected indices in [0, {depth}), got {moe_blocks!r}")
        self.modalities, self.dim, self.use_positions = list(modalities), dim, positions
        self.cross_modal_attention, self.router = cross_modal_attention, router
        self.modality_embed = nn.Parameter(torch.zeros(len(modalities), dim))
        nn.init.normal_(self.modality_embed, std=0.02)
        blocks = []
        for i in range(depth):
            if i in moe_set:
                ffn: nn.Module = MoELayer(
                    dim, hidden_dim, num_experts, top_k, router=router, capacity_factor=capacity_factor,
                    capacity_mode=capacity_mode, num_modalities=len(modalities),
                    num_shared_experts=num_shared_experts, activation=activation, backend=backend,
                    load_balance_weight=load_balance_weight, z_loss_weight=z_loss_weight,
                    soft_slots=soft_slots, groups=groups, validate_inputs=False,
                )
            else:
                ffn = DenseFFN(dim, dense_hidden_dim or top_k * hidden_dim, activation)
            blocks.append(MoEBlock(dim, num_heads, mixer, ffn, spectral_modes, spatial_dims))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        tokens: dict[str, torch.Tensor],
        positions: dict[str, torch.Tensor] | None = None,
        grid: tuple[int, ...] | None = None,
        mask: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if not isinstance(tokens, dict) or not tokens:
            raise TypeError(f"tokens: expected a non-empty dict of modality name -> tensor, got {type(tokens).__name__}")
        names = list(tokens)
        unknown = [n for n in names if n not in self.modalities]
        if unknown:
            raise ValueError(f"tokens: unknown modalities {unknown}, expected names from {self.modalities}")
        B = None
        parts, ids = [], []
        for name in names:
            t = check_tensor(f"tokens[{name!r}]", tokens[name], last_dim=self.dim, min_ndim=3)
            if t.ndim != 3 or (B is not None and t.shape[0] != B):
                raise ValueError(f"tokens[{name!r}]: expected [B, N, {self.dim}] with B={B}, got {tuple(t.shape)}")
            B = t.shape[0]
            m = self.modalities.index(name)
            t = t + self.modality_embed[m].to(t.dtype)
            if positions is not None and name in positions:
                pos = positions[name]
                if not isinstance(pos, torch.Tensor) or pos.shape[-2:] != t.shape[-2:] or pos.ndim > 3:
                    raise ValueError(f"positions[{name!r}]: expected a tensor broadcastable to {tuple(t.shape)}, "
                                     f"got {getattr(pos, 'shape', type(pos).__name__)}")
                t = t + pos.to(t.dtype)
            elif self.use_positions:
                t = t + sinusoidal_positions(t.shape[1], self.dim, t.device).to(t.dtype)
            parts.append(t)
            ids.append(torch.full(t.shape[:2], m, dtype=torch.long, device=t.device))
        x, modality = torch.cat(parts, dim=1), torch.cat(ids, dim=1)
        attn_mask, keep = self._masks(names, tokens, mask, modality)
        for block in self.blocks:
            x = block(x, modality, grid, attn_mask, keep)
        x = self.norm(x)
        sizes = [tokens[n].shape[1] for n in names]
        return dict(zip(names, x.split(sizes, dim=1)))

    def _masks(self, names: list[str], tokens: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None,
               modality: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Attention mask ``[B, 1, N, N]`` and flat indices of the real tokens (None when unused)."""
        if mask is None and self.cross_modal_attention:
            return None, None
        valid_parts = []
        for name in names:
            t = tokens[name]
            m = None if mask is None else mask.get(name)
            if m is None:
                m = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            elif not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != t.shape[:2]:
                raise ValueError(f"mask[{name!r}]: expected a bool tensor of shape {tuple(t.shape[:2])}, "
                                 f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
            valid_parts.append(m)
        valid = torch.cat(valid_parts, dim=1)  # [B, N]
        N = valid.shape[1]
        attend = valid[:, None, :].expand(-1, N, -1)
        if not self.cross_modal_attention:
            attend = attend & (modality[:, :, None] == modality[:, None, :])
        attend = attend | torch.eye(N, dtype=torch.bool, device=valid.device)  # no empty rows
        keep = None
        if mask is not None:
            if self.router in ("sample", "nested", "soft"):
                raise ValueError(f"mask: padding masks need a token-level router, got router={self.router!r}")
            keep = valid.reshape(-1).nonzero().squeeze(1)
        return attend.unsqueeze(1), keep
