"""ProxyTaskMoE: medical anomaly detection after MTL-MAD; a plain ``nn.Module``, no Lightning.

One ViT-style transformer, trained from scratch on normal images only, solves several
self-supervised proxy tasks at once; each proxy task is routed to its own experts:

* ``inpaint``: a random half of the patch tokens, in square blocks of 1, 2 or 4 tokens, is replaced by a
  mask token; reconstruct their pixels (blocks: a lesion larger than a patch cannot be copied from
  its unmasked neighbours);
* ``denoise``: Gaussian noise is added to the image; predict the clean image;
* ``pseudo_seg``: segment the synthetic pseudo-anomaly of the training batch
  (:mod:`mmoe.datamodules.anomaly.pseudo`: CutPaste, foreign patches, intensity changes);
* ``rotation``: every ``4 * patch`` cell of the image is rotated by a random multiple of 90 degrees;
  predict each token's rotation (a geometric-transform task with a per-token answer).

Routing (the ``moe`` settings): by default every MoE FFN has ``moe.num_experts`` experts in one
group per proxy task (``moe.groups == len(tasks)``), the last expert of a group shared by its
tokens, and the ``"proxy_task"`` router: the nested router whose group is the sample's proxy task
(task-conditioned; the token top-k inside the group is learned). Any other router (e.g. softmax
top-(k+1), which sees the task only through the task embedding added to every token) routes over
all experts. ``moe.dense`` replaces each MoE FFN by a dense FFN of width ``(top_k + 1) * hidden_dim``
(the active parameters per token of the task router).

Scoring (:meth:`ProxyTaskMoE.anomaly_maps`): each proxy task gives a per-pixel error on the
unaltered image: inpainting error (complementary checkerboard masks of 2- and 4-token blocks, averaged), denoising error (a
fixed noise draw), the predicted pseudo-anomaly probability, and the rotation surprise
``-log p(no rotation)``. Besides, a feature-distance map (``bank_size > 0``): each token's
features (the ``bank_tasks`` passes, concatenated) are compared with a memory bank of token
features of normal *training* images of the same modality (a greedy k-center coreset of
``bank_size`` tokens per modality, buffer ``bank``, filled by :meth:`fill_bank`); the map is the
distance to the nearest bank token. Error maps alone miss smooth lesions (a homogeneous mass is
easier to reconstruct than the tissue it replaces, so its error falls); how far a token's
features are from every normal token does not (issue 32). Each map is smoothed (Gaussian,
``smooth_sigma`` px) and standardised with its mean and standard deviation on normal validation
images of the same modality (``calib_mean``, ``calib_std``: buffers, so calibration travels with the
weights); the anomaly map is the mean of the standardised maps of ``map_tasks``, mixed with the
standardised feature distance (its share ``knn_share``), the image score the mean of its top
``top_fraction`` pixels, so a lesion that raises the map raises the score. An image of unknown
modality gets the modality head's prediction.

Decisions (:meth:`ProxyTaskMoE.thresholds`): the image scores and the map pixels of the normal
validation images give, per modality, the threshold at each false-positive rate of
:data:`FPR_GRID` (buffers ``score_table`` and ``pixel_table``; ``table_ready`` marks the
calibrated modalities); a threshold at another rate is interpolated in log-rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.moe_layer import MoELayer
from mmoe.routers import NestedRouter, register_router
from mmoe.settings import MoESettings

PROXY_TASKS = ("inpaint", "denoise", "pseudo_seg", "rotation")
#: false-positive rates at which the thresholds are stored (normal validation images)
FPR_GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
#: the default false-positive rates of ``is_anomalous`` (image level) and of the binary mask (pixel level)
DEFAULT_FPR = 0.01
DEFAULT_PIXEL_FPR = 0.01
#: group logit of the sample's task: softmax gives it gate 1.0 in float32
_FORCED_LOGIT = 1e4


@register_router("proxy_task", replace=True)
class ProxyTaskRouter(NestedRouter):
    """The ``"nested"`` router with the group imposed per sample: group ``g`` = the sample's proxy task.

    Set ``task_ids [num_samples]`` (long) before the forward; the token top-k inside the group
    and the group's shared expert work as in :class:`mmoe.routers.NestedRouter`.

    Args:
        groups: number of proxy tasks (expert groups).
    """

    context = "task_ids"

    def __init__(self, dim: int, num_experts: int, top_k: int, groups: int = 4) -> None:
        super().__init__(dim, num_experts, top_k, groups)
        self.task_ids: torch.Tensor | None = None

    def group_logits(self, x: torch.Tensor, sample: torch.Tensor, num_samples: int) -> torch.Tensor:
        ids = self.task_ids
        if ids is None or ids.shape != (num_samples,):
            raise ValueError(f"task_ids: expected a long tensor of shape ({num_samples},) set before the forward, "
                             f"got {None if ids is None else tuple(ids.shape)}")
        return F.one_hot(ids.to(x.device), self.groups).float() * _FORCED_LOGIT


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x [B, C, H, W]`` (reflect padding; identity for sigma <= 0)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    pad_h, pad_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    y = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w else "replicate")
    y = F.conv2d(y, k[r - pad_w: r + pad_w + 1].view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    y = F.pad(y, (0, 0, pad_h, pad_h), mode="reflect" if pad_h else "replicate")
    return F.conv2d(y, k[r - pad_h: r + pad_h + 1].view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def rotate_cells(x: torch.Tensor, k: torch.Tensor, cell: int) -> torch.Tensor:
    """Rotate every ``cell x cell`` block of ``x [B, C, H, W]`` by ``k [B, H/cell, W/cell]`` quarter turns."""
    B, C, H, W = x.shape
    h, w = H // cell, W // cell
    blocks = x.view(B, C, h, cell, w, cell).permute(0, 2, 4, 1, 3, 5)  # [B, h, w, C, c, c]
    rots = torch.stack([torch.rot90(blocks, r, dims=(-2, -1)) for r in range(4)])  # [4, B, h, w, C, c, c]
    idx = k.long().view(1, B, h, w, 1, 1, 1).expand(1, B, h, w, C, cell, cell)
    out = rots.gather(0, idx)[0]
    return out.permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


#: the recipe's MoE: the proxy-task router, one group of 2 experts (1 routed + 1 shared) per proxy task
ANOMALY_MOE = MoESettings(router="proxy_task", groups=4, num_experts=8, top_k=1)


class ProxyTaskMoE(nn.Module):
    """The multi-task transformer; see the module docstring.

    Args:
        tasks: proxy tasks to train and score with (names from :data:`PROXY_TASKS`).
        image_size: input side S (a multiple of ``4 * patch``).
        num_modalities: modalities of the modality head and of the calibration tables.
        patch: patch side (tokens are ``patch x patch`` pixels).
        dim: token width. depth: transformer blocks. num_heads: attention heads.
        hidden_dim: hidden width of each expert.
        moe: the MoE settings of every block (see the module docstring); the ``"proxy_task"`` router
            needs ``moe.groups == len(tasks)``.
        mask_ratio: share of tokens masked for ``inpaint``.
        noise_std: noise standard deviation for ``denoise``.
        smooth_sigma: Gaussian smoothing of the per-task maps in pixels.
        top_fraction: the image score is the mean of this share of the map's highest pixels.
        map_tasks: the tasks whose standardised maps are averaged into the anomaly map (None: all).
        bank_size: tokens per modality in the feature memory bank (0: no feature-distance map).
        bank_tasks: the passes whose token features (concatenated) the bank holds.
        knn_share: share of the feature-distance map in the anomaly map (the ``map_tasks`` maps' mean has the rest).
    """

    def __init__(
        self,
        *,
        tasks: list[str],
        image_size: int = 64,
        num_modalities: int = 4,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        hidden_dim: int = 128,
        moe: MoESettings = ANOMALY_MOE,
        mask_ratio: float = 0.5,
        noise_std: float = 0.1,
        smooth_sigma: float = 2.0,
        top_fraction: float = 0.01,
        map_tasks: list[str] | None = None,
        bank_size: int = 0,
        bank_tasks: list[str] | None = None,
        knn_share: float = 0.5,
    ) -> None:
        super().__init__()
        if image_size % (4 * patch):
            raise ValueError(f"image_size: expected a multiple of 4 * patch = {4 * patch}, got {image_size}")
        if map_tasks is not None and (not map_tasks or any(t not in tasks for t in map_tasks)):
            raise ValueError(f"map_tasks: expected a non-empty subset of tasks={list(tasks)}, got {map_tasks!r}")
        self.tasks, self.image_size, self.patch = list(tasks), image_size, patch
        self.mask_ratio, self.noise_std = mask_ratio, noise_std
        self.smooth_sigma, self.top_fraction = smooth_sigma, top_fraction
        self.map_tasks = list(map_tasks or tasks)
        self.bank_tasks = [t for t in (bank_tasks or ("pseudo_seg", "denoise")) if t in self.tasks] if bank_size else []
        if bank_size and not self.bank_tasks:
            raise ValueError(f"bank_tasks: expected names from tasks={list(tasks)}, got {bank_tasks!r}")
        if bank_tasks and any(t not in tasks or t == "inpaint" for t in bank_tasks):
            raise ValueError(f"bank_tasks: expected unmasked passes among tasks={[t for t in tasks if t != 'inpaint']}, "
                             f"got {bank_tasks!r}")
        self.knn_share = float(knn_share)
        T, g = len(self.tasks), image_size // patch
        self.num_tokens = g * g
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.task_embed = nn.Parameter(torch.zeros(T, dim))
        nn.init.normal_(self.task_embed, std=0.02)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        if moe.router == "proxy_task" and moe.groups != T:
            raise ValueError(f"moe.groups: the proxy_task router needs one group per proxy task, expected {T}, "
                             f"got {moe.groups}")
        blocks = [BlockSpec(mixer="attention", mixer_options={"num_heads": num_heads}, hidden_dim=hidden_dim,
                            dense_hidden_dim=(moe.top_k + 1) * hidden_dim, activation="gelu", **moe.block_fields())
                  for _ in range(depth)]
        self.backbone = MultimodalMoEBackbone(["image"], dim, blocks=blocks, positions=False)
        out = {"inpaint": 3 * patch * patch, "denoise": 3 * patch * patch, "pseudo_seg": patch * patch, "rotation": 4}
        self.heads = nn.ModuleDict({t: nn.Linear(dim, out[t]) for t in self.tasks})
        self.modality_head = nn.Linear(dim, num_modalities)
        C = T + (1 if bank_size else 0)  # calibrated maps: the tasks', then the feature distance
        self.register_buffer("calib_mean", torch.zeros(num_modalities, C))
        self.register_buffer("calib_std", torch.ones(num_modalities, C))
        if bank_size:
            self.register_buffer("bank", torch.zeros(num_modalities, bank_size, dim * len(self.bank_tasks)))
            self.register_buffer("bank_ready", torch.zeros(num_modalities))
        self.register_buffer("score_table", torch.zeros(num_modalities, len(FPR_GRID)))
        self.register_buffer("pixel_table", torch.zeros(num_modalities, len(FPR_GRID)))
        self.register_buffer("table_ready", torch.zeros(num_modalities))
        self.last_task_ids: torch.Tensor | None = None

    def no_weight_decay(self) -> list[str]:
        return ["pos_embed", "task_embed", "mask_token"]

    # ------------------------------------------------------------------ pieces
    def _routers(self) -> list[ProxyTaskRouter]:
        return [m.router for m in self.modules() if isinstance(m, MoELayer) and isinstance(m.router, ProxyTaskRouter)]

    def encode(self, x: torch.Tensor, task_ids: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[B, N, dim]`` of images ``x [B, 3, S, S]`` doing tasks ``task_ids [B]`` (index into
        ``tasks``); ``token_mask [B, N]`` (bool) replaces those patches by the mask token."""
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, dim]
        if token_mask is not None:
            t = torch.where(token_mask.unsqueeze(-1), self.mask_token.to(t.dtype), t)
        t = t + self.pos_embed + self.task_embed[task_ids].unsqueeze(1)
        for router in self._routers():
            router.task_ids = task_ids
        self.last_task_ids = task_ids
        try:
            return self.backbone({"image": t})["image"]
        finally:
            for router in self._routers():
                router.task_ids = None

    def unpatchify(self, y: torch.Tensor, channels: int) -> torch.Tensor:
        """``[B, N, channels * p * p]`` -> ``[B, channels, S, S]``."""
        B, p, g = y.shape[0], self.patch, self.image_size // self.patch
        return y.view(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, channels, g * p, g * p)

    #: side of a rotation cell in tokens
    ROT_CELL = 4
    #: inpainting: block sides (tokens) of the training masks, and of the complementary checkerboards when scoring
    TRAIN_BLOCKS = (1, 2, 4)
    EVAL_BLOCKS = (2, 4)

    def cell_grid(self) -> int:
        return self.image_size // (self.ROT_CELL * self.patch)

    def token_cells(self, k: torch.Tensor, cell: int | None = None) -> torch.Tensor:
        """Per-cell values ``[B, h, w]`` -> per-token ``[B, N]`` (a cell is ``cell x cell`` tokens)."""
        c = cell or self.ROT_CELL
        return k.repeat_interleave(c, 1).repeat_interleave(c, 2).flatten(1)

    def block_mask(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Random inpainting masks ``[n, N]`` (bool): per sample a block side from :attr:`TRAIN_BLOCKS`
        that divides the token grid, each block masked with probability ``mask_ratio``."""
        g = self.image_size // self.patch
        sizes = [b for b in self.TRAIN_BLOCKS if g % b == 0]
        out = torch.zeros(n, self.num_tokens, dtype=torch.bool)
        pick = torch.randint(len(sizes), (n,), generator=generator)
        for i in range(n):
            b = sizes[int(pick[i])]
            cells = torch.rand(1, g // b, g // b, generator=generator) < self.mask_ratio
            out[i] = self.token_cells(cells, b)[0]
        return out.to(device)

    def checkerboards(self, device: torch.device) -> list[torch.Tensor]:
        """Complementary checkerboard masks ``[N]`` of each block side in :attr:`EVAL_BLOCKS` (two per side)."""
        g = self.image_size // self.patch
        out = []
        for b in self.EVAL_BLOCKS:
            if g % b:
                continue
            idx = torch.arange(g) // b
            board = ((idx.view(-1, 1) + idx.view(1, -1)) % 2).bool().flatten().to(device)
            out += [board, ~board]
        return out

    # ------------------------------------------------------------------ training
    def training_outputs(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                         ) -> dict[str, torch.Tensor]:
        """One pass over a training batch; sample ``i`` does task ``tasks[i % T]``. Returns the
        predictions and targets the losses need (see :meth:`losses`)."""
        x = batch["image"]
        B, T, dev = x.shape[0], len(self.tasks), x.device
        ids = torch.arange(B, device=dev) % T
        inp = x.clone()
        token_mask = torch.zeros(B, self.num_tokens, dtype=torch.bool, device=dev)
        rand = lambda *s: torch.rand(*s, generator=generator, device="cpu").to(dev)  # noqa: E731
        out: dict[str, torch.Tensor] = {"task_ids": ids}
        for t, name in enumerate(self.tasks):
            sel = ids == t
            if not bool(sel.any()):
                continue
            if name == "inpaint":
                token_mask[sel] = self.block_mask(int(sel.sum()), generator, dev)
            elif name == "denoise":
                noise = torch.randn(x[sel].shape, generator=generator, device="cpu").to(dev)
                inp[sel] = x[sel] + self.noise_std * noise
            elif name == "pseudo_seg":
                inp[sel] = batch["pseudo_image"][sel]
            elif name == "rotation":
                g = self.cell_grid()
                k = (rand(int(sel.sum()), g, g) * 4).long().clamp_max(3)
                inp[sel] = rotate_cells(x[sel], k, self.ROT_CELL * self.patch)
                rot = torch.zeros(B, self.num_tokens, dtype=torch.long, device=dev)
                rot[sel] = self.token_cells(k)
                out["rotation_target"] = rot
        tokens = self.encode(inp, ids, token_mask)
        out["token_mask"] = token_mask
        out["modality_logits"] = self.modality_head(tokens.mean(1))
        for name in self.tasks:
            out[name] = self.heads[name](tokens)
        return out

    def losses(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task losses on the samples that did the task (a zero tensor for a task absent from the batch)."""
        x, ids, losses = batch["image"], out["task_ids"], {}
        for t, name in enumerate(self.tasks):
            sel = ids == t
            zero = out[name].sum() * 0
            if not bool(sel.any()):
                losses[name] = zero
                continue
            if name == "inpaint":
                rec = self.unpatchify(out[name][sel], 3)
                err = (rec - x[sel]).pow(2).mean(1)  # [b, S, S]
                m = out["token_mask"][sel].float().view(-1, 1, *(2 * [self.image_size // self.patch]))
                m = F.interpolate(m, scale_factor=self.patch, mode="nearest")[:, 0]
                losses[name] = (err * m).sum() / m.sum().clamp_min(1)
            elif name == "denoise":
                losses[name] = (self.unpatchify(out[name][sel], 3) - x[sel]).pow(2).mean()
            elif name == "pseudo_seg":
                logit = self.unpatchify(out[name][sel], 1)
                target = batch["pseudo_mask"][sel]
                bce = F.binary_cross_entropy_with_logits(logit, target)
                p = torch.sigmoid(logit)
                dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
                losses[name] = bce + dice
            elif name == "rotation":
                losses[name] = F.cross_entropy(out[name][sel].reshape(-1, 4), out["rotation_target"][sel].reshape(-1))
        losses["modality"] = F.cross_entropy(out["modality_logits"], batch["modality"])
        return losses

    # ------------------------------------------------------------------ scoring
    def raw_maps(self, x: torch.Tensor, modality: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-task error maps, then the feature distance when there is a bank: ``[B, C, S, S]``
        (smoothed, not calibrated), modality logits ``[B, M]`` and the modality used ``[B]`` (ids
        ``< 0`` or None: the modality head's) of images ``x [B, 3, S, S]``; all passes in one backbone call."""
        B, dev, g = x.shape[0], x.device, self.image_size // self.patch
        inputs, ids, masks, slots = [], [], [], {}
        boards = self.checkerboards(dev)
        no_mask = torch.zeros(B, self.num_tokens, dtype=torch.bool, device=dev)
        gen = torch.Generator().manual_seed(0)  # a fixed noise draw: the same image always gets the same map
        for t, name in enumerate(self.tasks):
            if name == "inpaint":
                for half in boards:
                    slots.setdefault(name, []).append(len(inputs))
                    inputs.append(x), masks.append(half.expand(B, -1)), ids.append(t)
                continue
            slots[name] = [len(inputs)]
            if name == "denoise":
                noise = torch.randn(x.shape[1:], generator=gen).to(dev, x.dtype)
                inputs.append(x + self.noise_std * noise)
            else:
                inputs.append(x)
            masks.append(no_mask), ids.append(t)
        n = len(inputs)
        task_ids = torch.tensor(ids, device=dev).repeat_interleave(B)
        tokens = self.encode(torch.cat(inputs), task_ids, torch.cat(masks)).view(n, B, self.num_tokens, -1)
        maps = []
        for name in self.tasks:
            if name == "inpaint":
                err = torch.zeros(B, self.image_size, self.image_size, device=dev, dtype=x.dtype)
                for j, half in zip(slots[name], boards):
                    rec = self.unpatchify(self.heads[name](tokens[j]), 3)
                    m = half.float().view(1, 1, g, g)
                    m = F.interpolate(m, scale_factor=self.patch, mode="nearest")[0, 0]
                    err = err + (rec - x).pow(2).mean(1) * m
                err = err / max(1, len(boards) // 2)  # each pixel is masked once per block side
            elif name == "denoise":
                err = (self.unpatchify(self.heads[name](tokens[slots[name][0]]), 3) - x).pow(2).mean(1)
            elif name == "pseudo_seg":
                err = torch.sigmoid(self.unpatchify(self.heads[name](tokens[slots[name][0]]), 1))[:, 0]
            else:  # rotation: surprise at the unrotated image, per token
                logp = F.log_softmax(self.heads[name](tokens[slots[name][0]]).float(), -1)[..., 0]
                err = F.interpolate((-logp).view(B, 1, g, g).to(x.dtype), scale_factor=self.patch, mode="nearest")[:, 0]
            maps.append(err)
        # the modality head reads a pass over the whole image (unmasked) when there is one
        whole = [slots[name][0] for name in self.tasks if name != "inpaint"]
        logits = self.modality_head(tokens[whole[0] if whole else 0].mean(1))
        pred = logits.argmax(-1)
        mod = pred if modality is None else torch.where(modality < 0, pred, modality.to(pred.device))
        if self.bank_tasks:
            feats = torch.cat([tokens[slots[name][0]] for name in self.bank_tasks], -1)  # [B, N, D]
            maps.append(self.feature_distance(feats, mod).to(x.dtype))
        maps = gaussian_blur(torch.stack(maps, 1), self.smooth_sigma)
        return maps, logits, mod

    def bank_features(self, x: torch.Tensor) -> torch.Tensor:
        """The token features ``[B, N, D]`` the bank holds (the ``bank_tasks`` passes of ``x``, concatenated)."""
        B, dev = x.shape[0], x.device
        inputs, ids = [], []
        gen = torch.Generator().manual_seed(0)  # the same noise draw as raw_maps
        for name in self.bank_tasks:
            t = self.tasks.index(name)
            if name == "denoise":
                inputs.append(x + self.noise_std * torch.randn(x.shape[1:], generator=gen).to(dev, x.dtype))
            else:
                inputs.append(x)
            ids.append(t)
        n = len(inputs)
        task_ids = torch.tensor(ids, device=dev).repeat_interleave(B)
        tokens = self.encode(torch.cat(inputs), task_ids).view(n, B, self.num_tokens, -1)
        return torch.cat(list(tokens), -1)

    def feature_distance(self, feats: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Distance of each token ``feats [B, N, D]`` to the nearest bank token of its image's modality,
        as a map ``[B, S, S]`` (zeros for a modality without a bank)."""
        B, g = feats.shape[0], self.image_size // self.patch
        bank = self.bank[modality].to(feats.dtype)  # [B, K, D]
        d = torch.cdist(feats.float(), bank.float()).amin(-1)  # [B, N]
        d = d * self.bank_ready[modality].view(B, 1).to(d.dtype)
        return F.interpolate(d.view(B, 1, g, g), scale_factor=self.patch, mode="bilinear", align_corners=False)[:, 0]

    @torch.no_grad()
    def fill_bank(self, feats: torch.Tensor, modality: int) -> None:
        """Fill modality ``modality``'s bank from token features ``[n, D]`` of normal training images:
        a greedy k-center coreset of ``bank_size`` tokens (every token is then near a bank token),
        repeated to fill the bank when there are fewer tokens."""
        K = self.bank.shape[1]
        feats = feats.detach().float()
        if len(feats) <= K:
            idx = torch.arange(K, device=feats.device) % len(feats)
        else:
            chosen = torch.empty(K, dtype=torch.long, device=feats.device)
            chosen[0] = 0
            dist = (feats - feats[0]).pow(2).sum(-1)
            for i in range(1, K):  # the farthest token from those chosen so far
                chosen[i] = dist.argmax()
                dist = torch.minimum(dist, (feats - feats[chosen[i]]).pow(2).sum(-1))
            idx = chosen
        self.bank[modality] = feats[idx].to(self.bank.dtype)
        self.bank_ready[modality] = 1.0



    def combine(self, raw: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """The anomaly map ``[B, S, S]`` from the raw maps ``[B, C, S, S]`` of modalities ``mod [B]``."""
        mean, std = self.calib_mean[mod], self.calib_std[mod].clamp_min(1e-6)  # [B, C]
        z = (raw - mean[..., None, None]) / std[..., None, None]
        amap = z[:, [self.tasks.index(t) for t in self.map_tasks]].mean(1)
        if not self.bank_tasks:
            return amap
        w = (self.knn_share * self.bank_ready[mod].to(z.dtype))[:, None, None]  # no bank yet: the task maps only
        return (1 - w) * amap + w * z[:, -1]

    def image_score(self, amap: torch.Tensor) -> torch.Tensor:
        """The image score ``[B]``: the mean of the top ``top_fraction`` pixels of the map ``[B, S, S]``."""
        k = max(1, int(round(self.top_fraction * amap[0].numel())))
        return amap.flatten(1).topk(k, dim=1).values.mean(1)

    def anomaly_maps(self, x: torch.Tensor, modality: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"map": [B, S, S], "score": [B], "task_maps": raw [B, C, S, S], "modality": [B]}``; modality ids
        ``< 0`` (or None) are predicted by the modality head."""
        raw, logits, mod = self.raw_maps(x, modality)
        amap = self.combine(raw, mod)
        return {"map": amap, "score": self.image_score(amap), "task_maps": raw, "modality": mod,
                "modality_logits": logits}

    # ------------------------------------------------------------------ decisions
    @torch.no_grad()
    def set_thresholds(self, scores: torch.Tensor, pixels: torch.Tensor, modality: int) -> None:
        """Store modality ``modality``'s thresholds at :data:`FPR_GRID` from the image scores ``[n]``
        and map pixels ``[p]`` of its normal validation images (the ``1 - fpr`` quantiles)."""
        q = 1 - torch.tensor(FPR_GRID, dtype=torch.float64)
        self.score_table[modality] = torch.quantile(scores.double().cpu(), q).to(self.score_table.dtype)
        pix = pixels.double().cpu()
        if pix.numel() > 1 << 24:  # torch.quantile's input limit: an even subsample
            pix = pix[:: -(-pix.numel() // (1 << 24))]
        self.pixel_table[modality] = torch.quantile(pix, q).to(self.pixel_table.dtype)
        self.table_ready[modality] = 1.0

    def thresholds(self, modality: torch.Tensor, fpr: float, pixel_fpr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image thresholds [B], pixel thresholds [B])`` of modalities ``modality [B]`` at the given
        false-positive rates (interpolated in log-rate in :data:`FPR_GRID`, clamped to its ends); NaN for
        an uncalibrated modality."""
        grid = torch.tensor(FPR_GRID, dtype=torch.float64).log()

        def at(table: torch.Tensor, rate: float) -> torch.Tensor:
            r = min(max(math.log(rate), float(grid[0])), float(grid[-1]))
            j = int(torch.searchsorted(grid, torch.tensor(r, dtype=torch.float64)).clamp(1, len(grid) - 1))
            w = (r - float(grid[j - 1])) / float(grid[j] - grid[j - 1])
            t = table[modality].double().cpu()
            out = t[:, j - 1] * (1 - w) + t[:, j] * w
            return torch.where(self.table_ready[modality].cpu() > 0, out, torch.full_like(out, float("nan")))

        return at(self.score_table, fpr), at(self.pixel_table, pixel_fpr)
