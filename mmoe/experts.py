"""Expert weights: ``E`` SwiGLU or GELU MLPs stored as stacked tensors.

Layout (the checkpoint format): ``w_in [E, dim, hidden]`` for GELU or ``[E, dim, 2*hidden]``
for SwiGLU (gate columns first, then up); ``w_out [E, hidden, dim]``.
"""

from __future__ import annotations

import torch
from torch import nn

from mmoe.kernels.reference import activate

ACTIVATIONS = ("swiglu", "gelu")


class Experts(nn.Module):
    """Stacked expert MLP weights; :meth:`dense` applies all of them to every token (summed)."""

    def __init__(self, num_experts: int, dim: int, hidden_dim: int, activation: str = "swiglu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.num_experts, self.dim, self.hidden_dim, self.activation = num_experts, dim, hidden_dim, activation
        width = 2 * hidden_dim if activation == "swiglu" else hidden_dim
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, width))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        nn.init.normal_(self.w_in, std=dim**-0.5)
        nn.init.normal_(self.w_out, std=hidden_dim**-0.5)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_e act(x @ w_in[e]) @ w_out[e]`` for ``x [T, dim]`` (shared experts)."""
        h = activate(torch.einsum("td,edh->eth", x, self.w_in.to(x.dtype)), self.activation)
        return torch.einsum("eth,ehd->td", h, self.w_out.to(x.dtype))

    def slots(self, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` applied to ``x[:, e]`` for ``x [B, E, S, dim]`` (soft MoE slots)."""
        h = activate(torch.einsum("besd,edh->besh", x, self.w_in.to(x.dtype)), self.activation)
        return torch.einsum("besh,ehd->besd", h, self.w_out.to(x.dtype))


class DenseFFN(nn.Module):
    """A dense MLP with the same activation convention, for dense blocks and baselines."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "swiglu") -> None:
        super().__init__()
        self.mlp = Experts(1, dim, hidden_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.mlp.dense(x.reshape(-1, shape[-1])).reshape(shape)
