"""The multimodal MoE backbone: pre-norm blocks of [token mixer -> MoE (or dense) FFN], built from
a list of typed block specifications (:class:`BlockSpec`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from mmoe.experts import ACTIVATIONS, DenseFFN
from mmoe.mixers import build_mixer
from mmoe.moe_layer import MoELayer
from mmoe.validation import check_choice, check_positive_int, check_tensor

FFN_KINDS = ("moe", "dense")
DEFAULT_DEPTH = 4


def sinusoidal_positions(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Standard sin/cos positions ``[n, dim]`` (works for any sequence length)."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


@dataclass
class BlockSpec:
    """One backbone block: ``x + mixer(norm1(x))`` then ``x + ffn(norm2(x), modality)``.

    Args:
        mixer: token mixer, a name from :data:`mmoe.mixers.MIXERS`.
        mixer_options: the mixer's keyword options, ``MIXERS[mixer](dim=dim, **mixer_options)``.
        ffn: ``"moe"`` (a :class:`mmoe.MoELayer`) or ``"dense"`` (a :class:`mmoe.DenseFFN`).
        hidden_dim: hidden width of each expert.
        num_experts: routed experts E.
        top_k: experts per token k.
        router: a name from :data:`mmoe.routers.ROUTERS`.
        router_options: the router's keyword options, e.g. ``{"groups": 2}`` for ``"nested"``.
        capacity_factor: None is dropless; else ``C = ceil(cf * k * T / E)`` pairs per expert.
        capacity_mode: ``"macs"`` (modality-aware), ``"static"``, ``"macs_output"`` or ``"macs_paper"`` (see
            :class:`mmoe.moe_layer.MoELayer`).
        num_shared_experts: experts applied to every token, beside the routed ones.
        activation: ``"swiglu"`` or ``"gelu"`` (experts and dense FFN).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        load_balance_weight: weight of the Switch load-balancing loss.
        z_loss_weight: weight of the router z-loss.
        dense_hidden_dim: hidden width of a dense FFN (None: ``top_k * hidden_dim``, the active
            width of an MoE block).
        router_temperature: routing temperature T (logits / T for the routing decision).
        entropy_weight: routing-entropy weight H.
        ecology_target: None, or the expert ecology E = T·H/(O+B) the layer holds by setting H.
    """

    mixer: str = "attention"
    mixer_options: dict[str, Any] = field(default_factory=dict)
    ffn: Literal["moe", "dense"] = "moe"
    hidden_dim: int = 512
    num_experts: int = 8
    top_k: int = 2
    router: str = "softmax"
    router_options: dict[str, Any] = field(default_factory=dict)
    capacity_factor: float | None = None
    capacity_mode: Literal["macs", "static", "macs_output", "macs_paper"] = "macs"
    num_shared_experts: int = 0
    activation: Literal["swiglu", "gelu"] = "swiglu"
    backend: Literal["auto", "torch", "triton"] = "auto"
    load_balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    dense_hidden_dim: int | None = None
    router_temperature: float = 1.0
    entropy_weight: float = 0.0
    ecology_target: float | None = None


def as_block_spec(value: object, name: str = "block") -> BlockSpec:
    """``value`` as a :class:`BlockSpec`: a BlockSpec, or a dict of its fields (from JSON/YAML)."""
    if isinstance(value, BlockSpec):
        return value
    if isinstance(value, Mapping):
        fields = [f.name for f in dataclasses.fields(BlockSpec)]
        unknown = [key for key in value if key not in fields]
        if unknown:
            raise ValueError(f"{name}: unknown BlockSpec fields {unknown}; expected names from {fields}")
        return BlockSpec(**value)
    raise TypeError(f"{name}: expected a BlockSpec or a dict of its fields, got {type(value).__name__}")


def build_ffn(spec: BlockSpec, dim: int, num_modalities: int) -> nn.Module:
    """The FFN of a block: a :class:`MoELayer` (``ffn="moe"``) or a :class:`DenseFFN` (``"dense"``).

    Errors name the spec field (e.g. ``top_k: ...``).
    """
    check_choice("ffn", spec.ffn, FFN_KINDS)
    if spec.dense_hidden_dim is not None:
        check_positive_int("dense_hidden_dim", spec.dense_hidden_dim)
    if spec.ffn == "dense":
        check_positive_int("hidden_dim", spec.hidden_dim)
        check_positive_int("top_k", spec.top_k)
        check_choice("activation", spec.activation, ACTIVATIONS)
        return DenseFFN(dim, spec.dense_hidden_dim or spec.top_k * spec.hidden_dim, spec.activation)
    return MoELayer(
        dim, spec.hidden_dim, spec.num_experts, spec.top_k, router=spec.router,
        router_options=spec.router_options, capacity_factor=spec.capacity_factor,
        capacity_mode=spec.capacity_mode, num_modalities=num_modalities,
        num_shared_experts=spec.num_shared_experts, activation=spec.activation, backend=spec.backend,
        load_balance_weight=spec.load_balance_weight, z_loss_weight=spec.z_loss_weight, validate_inputs=False,
        router_temperature=spec.router_temperature, entropy_weight=spec.entropy_weight,
        ecology_target=spec.ecology_target,
    )


class MoEBlock(nn.Module):
    """``x + mixer(norm1(x))`` then ``x + ffn(norm2(x), modality)``.

    Args:
        dim: token width.
        mixer: the token mixer module.
        ffn: a :class:`MoELayer` or a dense FFN module.
    """

    def __init__(self, dim: int, mixer: nn.Module, ffn: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = mixer
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
    """Shared backbone over per-modality token tensors, built from a list of :class:`BlockSpec`.

    ``forward({name: [B, N_m, dim]}, positions=None, grid=None, mask=None)`` concatenates the
    modalities given (any subset of ``modalities``), adds a learned modality embedding and positions
    (sinusoidal over each modality's token index, or the task's own ``positions[name]``
    broadcastable to ``[B, N_m, dim]``), runs the blocks with modality ids passed to the MoE layers,
    and returns the tokens split back per modality. Inputs are computed in the backbone's parameter
    dtype and each output is returned in its input's dtype. ``mask[name] [B, N_m]`` (bool, True =
    real token) marks padding: padded tokens are attended by nobody and never routed (the valid
    tokens are gathered once per forward -- one host sync -- so capacity counts real tokens only;
    this needs token-level routers, ``Router.token_level``, in every MoE block). With
    ``cross_modal_attention=False`` tokens attend only to tokens of their own modality (unimodal
    encoders that still share the MoE FFNs). ``grid`` (the spatial token grid, e.g. ``(8, 8)``) is
    handed to grid-aware mixers such as ``"spectral"``.

    Args:
        modalities: names of the modalities (a list of distinct strings).
        dim: token width.
        blocks: one :class:`BlockSpec` (or dict of its fields) per block; None: ``depth`` x ``BlockSpec()``.
        depth: number of blocks when ``blocks`` is None (else left at its default or ``len(blocks)``).
        positions: add sinusoidal positions to modalities without task-given ``positions``.
        cross_modal_attention: let tokens attend to the tokens of other modalities.
    """

    def __init__(
        self,
        modalities: list[str],
        dim: int = 256,
        blocks: list[BlockSpec] | None = None,
        depth: int = DEFAULT_DEPTH,
        positions: bool = True,
        cross_modal_attention: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(modalities, str) or not isinstance(modalities, (list, tuple)):
            raise TypeError(f"modalities: expected a list of modality names, got {type(modalities).__name__} "
                            f"{modalities!r}")
        if (not modalities or len(set(modalities)) != len(modalities)
                or not all(isinstance(m, str) and m for m in modalities)):
            raise ValueError(f"modalities: expected a non-empty list of distinct names, got {modalities!r}")
        check_positive_int("dim", dim)
        check_positive_int("depth", depth)
        if blocks is None:
            specs = [BlockSpec() for _ in range(depth)]
        else:
            if not isinstance(blocks, (list, tuple)):
                raise TypeError(f"blocks: expected a list of BlockSpec (or dicts of its fields), "
                                f"got {type(blocks).__name__}")
            if not blocks:
                raise ValueError("blocks: expected at least one block spec, got an empty list")
            if depth != DEFAULT_DEPTH and depth != len(blocks):
                raise ValueError(f"depth: expected len(blocks)={len(blocks)} (or depth left out), got {depth}")
            specs = [as_block_spec(b, f"blocks[{i}]") for i, b in enumerate(blocks)]
        self.modalities, self.dim, self.use_positions = list(modalities), dim, positions
        self.cross_modal_attention = cross_modal_attention
        self.specs = specs
        self.modality_embed = nn.Parameter(torch.zeros(len(modalities), dim))
        nn.init.normal_(self.modality_embed, std=0.02)
        layers = []
        for i, spec in enumerate(specs):
            try:
                ffn = build_ffn(spec, dim, len(modalities))
                mixer = build_mixer(spec.mixer, dim, spec.mixer_options)
            except (TypeError, ValueError) as e:  # the message starts with the field name
                error = TypeError if isinstance(e, TypeError) else ValueError
                raise error(f"blocks[{i}].{e}") from e
            layers.append(MoEBlock(dim, mixer, ffn))
        self.blocks = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)

    def no_weight_decay(self) -> list[str]:
        """Parameters that are tables, not weights: the optimizer does not decay them."""
        return ["modality_embed"]

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
        dtype = self.modality_embed.dtype  # inputs are computed in the parameters' dtype
        B = None
        parts, ids = [], []
        for name in names:
            t = check_tensor(f"tokens[{name!r}]", tokens[name], last_dim=self.dim, min_ndim=3)
            if t.ndim != 3 or (B is not None and t.shape[0] != B):
                raise ValueError(f"tokens[{name!r}]: expected [B, N, {self.dim}] with B={B}, got {tuple(t.shape)}")
            B = t.shape[0]
            m = self.modalities.index(name)
            t = t.to(dtype) + self.modality_embed[m]
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
        return {n: y.to(tokens[n].dtype) for n, y in zip(names, x.split(sizes, dim=1))}

    def _masks(self, names: list[str], tokens: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None,
               modality: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Attention mask ``[B, 1, N, N]`` and flat indices of the real tokens (None when unused)."""
        if mask is None and self.cross_modal_attention:
            return None, None
        if mask is not None and not isinstance(mask, dict):
            raise TypeError(f"mask: expected a dict of modality name -> bool tensor, got {type(mask).__name__}")
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
            for i, block in enumerate(self.blocks):
                if isinstance(block.ffn, MoELayer) and not block.ffn.router.token_level:
                    raise ValueError(f"mask: padding masks need token-level routers in every MoE block, got "
                                     f"router={block.ffn.router_kind!r} in blocks[{i}]")
            keep = valid.reshape(-1).nonzero().squeeze(1)
        return attend.unsqueeze(1), keep
