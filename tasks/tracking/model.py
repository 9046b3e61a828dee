"""OneStreamMoETracker: a one-stream transformer tracker over template and search tokens of RGB and
X (after OneTrackerV2 and UETrack), on the shared backbone; a plain ``nn.Module``, no Lightning.

Layout::

    template RGB [B, 3, T, T] -> patch embed -> "z_rgb" tokens --+
    template X   [B, 1, T, T] -> patch embed -> "z_x"   tokens --+-> MultimodalMoEBackbone -> "s_rgb" (+ "s_x")
    search RGB   [B, 3, S, S] -> patch embed -> "s_rgb" tokens --+      (joint attention, dual MoE)
    search X     [B, 1, S, S] -> patch embed -> "s_x"   tokens --+
    -> search grid [B, dim, S/p, S/p] -> centre head: score logits, size (w, h) / S, offset in the cell

Design choices:

* One stream: template and search tokens attend to each other in every block, so matching and
  feature extraction are one computation (OSTrack, OneTracker).
* Dual MoE: blocks alternate a token-level MoE FFN (the ``moe`` settings' router, softmax top-k
  by default: per-token experts for spatio-temporal matching) and a token-pooling soft MoE FFN
  (``router="soft"``: each expert's slots pool tokens of every modality, UETrack's TP-MoE for fusion).
* Four modality ids (template/search x RGB/X) and learned positions per grid shared by RGB and
  X, so a location's RGB and X tokens carry the same position.
* Missing X: the X tokens are simply left out (the backbone takes any subset of its
  modalities); training drops X for a fraction of the batches so both paths are learned.
* One model for every X (``modality_prompt=True``): a learned embedding per X kind
  (:data:`X_KINDS`: none, depth, thermal, event) is added to every token, so the weights know
  which sensor the X tokens come from (and that there are none). It starts at zero; without the
  option there is no such parameter, so files saved before it load unchanged.
* ``moe.dense`` gives the dense baseline: every MoE FFN a dense FFN of the active width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.settings import MoESettings
from mmoe.validation import check_positive_int

MODALITIES = ["z_rgb", "z_x", "s_rgb", "s_x"]
#: the X kinds of the modality prompt, by id (0: no X)
X_KINDS: tuple[str | None, ...] = (None, "depth", "thermal", "event")
#: the recipe's MoE: softmax top-1 of 4 experts in the matching blocks, dropless
TRACKING_MOE = MoESettings(router="softmax", num_experts=4, top_k=1)


class OneStreamMoETracker(nn.Module):
    """Template + search crops -> centre-head maps on the search grid (see the module docstring).

    Args:
        template_size: template crop side T.
        search_size: search crop side S.
        patch_size: patch side p (T and S multiples of it).
        dim: token width.
        depth: backbone blocks (alternating token-level and soft MoE, starting with token-level).
        num_heads: attention heads.
        hidden_dim: hidden width of each expert.
        moe: the MoE settings: router, top-k, capacity of the matching blocks; ``num_experts`` and the
            loss weights of every MoE block; ``moe.dense`` gives the dense baseline with the same active width.
        slots: slots per expert in the soft-MoE fusion blocks.
        modality_prompt: add a learned embedding of the X kind (:data:`X_KINDS`) to every token.
    """

    def __init__(self, *, template_size: int = 64, search_size: int = 128, patch_size: int = 8, dim: int = 128,
                 depth: int = 4, num_heads: int = 4, hidden_dim: int = 256, moe: MoESettings = TRACKING_MOE,
                 slots: int = 4, modality_prompt: bool = False) -> None:
        super().__init__()
        for name, value in (("template_size", template_size), ("search_size", search_size),
                            ("patch_size", patch_size), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                            ("hidden_dim", hidden_dim), ("slots", slots)):
            check_positive_int(name, value)
        if template_size % patch_size or search_size % patch_size:
            raise ValueError(f"patch_size: expected a divisor of template_size={template_size} and "
                             f"search_size={search_size}, got {patch_size}")
        self.dense = moe.dense
        self.template_size, self.search_size, self.patch_size = template_size, search_size, patch_size
        self.grid = search_size // patch_size
        self.rgb_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.x_embed = nn.Conv2d(1, dim, patch_size, stride=patch_size)
        self.z_pos = nn.Parameter(torch.zeros(1, (template_size // patch_size) ** 2, dim))
        self.s_pos = nn.Parameter(torch.zeros(1, self.grid**2, dim))
        nn.init.trunc_normal_(self.z_pos, std=0.02)
        nn.init.trunc_normal_(self.s_pos, std=0.02)
        # zeros: a new prompt starts neutral (the model as without it)
        prompt = nn.Parameter(torch.zeros(len(X_KINDS), dim)) if modality_prompt else None
        self.register_parameter("x_kind_embed", prompt)
        blocks = []
        for i in range(depth):
            soft = i % 2 == 1
            fields = moe.block_fields()
            if soft:  # the fusion blocks stay token-pooling soft MoE: dropless, no top-k
                fields.update(router="soft", router_options={"slots": slots}, capacity_factor=None)
            blocks.append(BlockSpec(
                mixer="attention", mixer_options={"num_heads": num_heads}, hidden_dim=hidden_dim,
                # a soft-MoE token gets a mixture of all slots; its dense twin is one expert wide
                dense_hidden_dim=hidden_dim if soft else moe.top_k * hidden_dim, activation="gelu", **fields))
        self.backbone = MultimodalMoEBackbone(MODALITIES, dim=dim, blocks=blocks, positions=False)
        self.head = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim // 2, 3, padding=1),
                                  nn.GELU(), nn.Conv2d(dim // 2, 5, 1))
        with torch.no_grad():  # a low initial score everywhere (focal-loss practice)
            self.head[-1].bias[0].fill_(-4.6)

    def no_weight_decay(self) -> list[str]:
        return ["z_pos", "s_pos"] + (["x_kind_embed"] if self.x_kind_embed is not None else [])

    def _tokens(self, conv: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
        return conv(image).flatten(2).transpose(1, 2)

    def forward(self, template: torch.Tensor, search: torch.Tensor, template_x: torch.Tensor | None = None,
                search_x: torch.Tensor | None = None, x_kind: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Centre-head maps on the ``S/p x S/p`` search grid.

        Args:
            template: RGB template crops ``[B, 3, T, T]`` in [0, 1].
            search: RGB search crops ``[B, 3, S, S]`` in [0, 1].
            template_x: X template crops ``[B, 1, T, T]`` in [0, 1], or None (X missing).
            search_x: X search crops ``[B, 1, S, S]``, given exactly when ``template_x`` is.
            x_kind: ids ``[B]`` into :data:`X_KINDS` of each sample's X (used with ``modality_prompt``);
                None: 0 (none) without X, 1 (depth) with X.

        Returns ``{"score": logits [B, g, g], "size": [B, 2, g, g] (w, h) / S in (0, 1),
        "offset": [B, 2, g, g] in (0, 1) (centre within its cell)}``.
        """
        T, S = self.template_size, self.search_size
        if template.ndim != 4 or template.shape[1:] != (3, T, T):
            raise ValueError(f"template: expected [B, 3, {T}, {T}], got {tuple(template.shape)}")
        if search.ndim != 4 or search.shape[1:] != (3, S, S) or search.shape[0] != template.shape[0]:
            raise ValueError(f"search: expected [{template.shape[0]}, 3, {S}, {S}], got {tuple(search.shape)}")
        if (template_x is None) != (search_x is None):
            raise ValueError("template_x: give X for both the template and the search crop, or for neither")
        B = template.shape[0]
        tokens = {"z_rgb": self._tokens(self.rgb_embed, template) + self.z_pos,
                  "s_rgb": self._tokens(self.rgb_embed, search) + self.s_pos}
        if template_x is not None:
            if template_x.shape != (B, 1, T, T) or search_x.shape != (B, 1, S, S):
                raise ValueError(f"template_x/search_x: expected [{B}, 1, {T}, {T}] and [{B}, 1, {S}, {S}], "
                                 f"got {tuple(template_x.shape)} and {tuple(search_x.shape)}")
            tokens["z_x"] = self._tokens(self.x_embed, template_x) + self.z_pos
            tokens["s_x"] = self._tokens(self.x_embed, search_x) + self.s_pos
        if self.x_kind_embed is not None:
            if x_kind is None:
                x_kind = torch.full((B,), 0 if template_x is None else 1, dtype=torch.long, device=template.device)
            if x_kind.shape != (B,) or x_kind.dtype != torch.long:
                raise ValueError(f"x_kind: expected [{B}] int64 ids, got {tuple(x_kind.shape)} {x_kind.dtype}")
            # without X every id is 0 (none): set here rather than checked (no device sync)
            ids = x_kind if template_x is not None else torch.zeros_like(x_kind)
            prompt = self.x_kind_embed[ids][:, None, :].to(tokens["z_rgb"].dtype)
            tokens = {k: v + prompt for k, v in tokens.items()}
        out = self.backbone(tokens)
        s = out["s_rgb"] + out["s_x"] if "s_x" in out else out["s_rgb"]
        g = self.grid
        maps = self.head(s.transpose(1, 2).reshape(B, -1, g, g))
        return {"score": maps[:, 0], "size": torch.sigmoid(maps[:, 1:3]), "offset": torch.sigmoid(maps[:, 3:5])}


def hann_window(grid: int, device: torch.device | None = None) -> torch.Tensor:
    """A ``[grid, grid]`` outer product of Hann windows, 1 at the centre, > 0 everywhere."""
    w = torch.hann_window(grid + 2, periodic=False, device=device)[1:-1]
    return w[:, None] * w[None, :] / w.max() ** 2


def decode_boxes(maps: dict[str, torch.Tensor], window: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(boxes [B, 4] xywh / S, confidence [B])`` from the best-scoring cell of each map.

    ``window`` in [0, 1]: the cell is chosen by ``p x ((1 - window) + window x hann)`` (``p`` the
    score probability, ``hann`` :func:`hann_window`), a prior for small motion between frames
    that Siamese and one-stream trackers apply at inference; the confidence stays ``p`` there."""
    score, size, offset = maps["score"], maps["size"], maps["offset"]
    B, g, _ = score.shape
    prob = torch.sigmoid(score.float())
    ranked = prob * ((1 - window) + window * hann_window(g, score.device)) if window > 0 else prob
    best = ranked.flatten(1).argmax(1)
    rows, cols = best // g, best % g
    idx = torch.arange(B, device=score.device)
    cx = (cols + offset[idx, 0, rows, cols]) / g
    cy = (rows + offset[idx, 1, rows, cols]) / g
    w, h = size[idx, 0, rows, cols], size[idx, 1, rows, cols]
    conf = prob[idx, rows, cols]
    return torch.stack([cx - w / 2, cy - h / 2, w, h], dim=1), conf


def centre_targets(box: torch.Tensor, grid: int, sigma_scale: float = 1 / 6) -> dict[str, torch.Tensor]:
    """Training targets of the centre head for boxes ``[B, 4]`` xywh / S: a Gaussian heatmap
    ``[B, g, g]`` peaking at 1 on the centre's cell (sigma ``sigma_scale`` x the box size in
    cells, at least 0.5 cell), the centre's cell ``[B, 2]`` (row, col) and its in-cell offset ``[B, 2]``."""
    cx, cy = (box[:, 0] + box[:, 2] / 2) * grid, (box[:, 1] + box[:, 3] / 2) * grid
    col = cx.floor().clamp(0, grid - 1)
    row = cy.floor().clamp(0, grid - 1)
    coords = torch.arange(grid, device=box.device, dtype=box.dtype) + 0.5
    sx = (box[:, 2] * grid * sigma_scale).clamp_min(0.5)
    sy = (box[:, 3] * grid * sigma_scale).clamp_min(0.5)
    gx = torch.exp(-0.5 * ((coords[None] - (col + 0.5)[:, None]) / sx[:, None]) ** 2)
    gy = torch.exp(-0.5 * ((coords[None] - (row + 0.5)[:, None]) / sy[:, None]) ** 2)
    return {"heatmap": gy[:, :, None] * gx[:, None, :], "cell": torch.stack([row, col], 1).long(),
            "offset": torch.stack([cx - col, cy - row], 1).clamp(0, 1)}


def focal_loss(logits: torch.Tensor, heatmap: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss over ``[B, g, g]`` maps, normalised by the number of peaks (B)."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    peak = heatmap >= 1 - 1e-6
    pos = -((1 - p) ** alpha) * torch.log(p) * peak
    neg = -((1 - heatmap) ** beta) * (p**alpha) * torch.log(1 - p) * ~peak
    return (pos.sum() + neg.sum()) / max(int(peak.sum()), 1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - GIoU`` of xywh boxes ``[B, 4]``."""
    from torchvision.ops import generalized_box_iou_loss

    def xyxy(b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)

    return generalized_box_iou_loss(xyxy(pred.float()), xyxy(target.float()), reduction="mean")


def tracking_loss(maps: dict[str, torch.Tensor], box: torch.Tensor, giou_weight: float = 2.0,
                  l1_weight: float = 5.0) -> dict[str, torch.Tensor]:
    """Focal loss on the score map plus L1 and GIoU on the box read at the true centre's cell."""
    g = maps["score"].shape[-1]
    t = centre_targets(box, g)
    idx = torch.arange(len(box), device=box.device)
    rows, cols = t["cell"][:, 0], t["cell"][:, 1]
    size = maps["size"][idx, :, rows, cols]
    offset = maps["offset"][idx, :, rows, cols]
    centre = (torch.stack([cols, rows], 1).to(offset.dtype) + offset) / g
    pred = torch.cat([centre - size / 2, size], dim=1)
    focal = focal_loss(maps["score"], t["heatmap"])
    l1 = F.l1_loss(pred.float(), box.float())
    giou = giou_loss(pred, box)
    return {"loss": focal + l1_weight * l1 + giou_weight * giou, "focal": focal, "l1": l1, "giou": giou}
