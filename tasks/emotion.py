"""Emotion recognition in conversations on the shared MoE backbone (after MiSTER-E).

Per utterance, speech tokens (torchaudio log-mel frames, patched) and text tokens (open_clip
BPE ids; learned embeddings, or optionally open_clip's frozen text transformer) go with their modality ids into a unimodal MoE encoder (attention
within each modality, MoE FFNs shared by both, so capacity and MACS see the modality mix) and
a cross-modal MoE block (attention across modalities). Three experts read it: a speech
expert (pooled speech tokens), a text expert (pooled text tokens) and a cross-modal expert
(pooled fused tokens). Each expert's utterance vectors pass a context model over the turns of
the conversation (a bidirectional GRU) and a head that gives class logits; a gate looks at the
three contextual vectors and mixes the experts' logits (a logit-level gate). The loss is
(focal or class-weighted) cross-entropy on the mixed logits plus ``expert_loss_weight`` times
the mean over the per-expert logits.

With one modality (the ablation configs) the model has that modality's expert alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from mmoe.backbone import MultimodalMoEBackbone
from mmoe.conversation import SAMPLE_RATE, check_conversation, collate_conversations, num_frames, num_patches
from mmoe.datamodules.emotion_synthetic import CLASSES, UTTERANCE_TYPES
from mmoe.tasks.base import BaseMoETask
from mmoe.validation import check_choice, check_positive_int

TEXT_VOCAB = 49408  # open_clip BPE vocabulary
MODALITIES = ("speech", "text")
LOSSES = ("ce", "focal")


class LogMelPatches(nn.Module):
    """Waveforms ``[N, S]`` with lengths ``[N]`` -> patch tokens ``[N, P, dim]`` and mask ``[N, P]``.

    Log-mel features with a fixed (not per-utterance) scaling, so loudness stays a feature;
    ``patch`` consecutive frames form one token; frames past an utterance's end are zeroed.
    """

    def __init__(self, dim: int, n_mels: int = 64, patch: int = 8, n_fft: int = 400, hop_length: int = 160) -> None:
        super().__init__()
        self.patch, self.hop_length, self.n_mels = patch, hop_length, n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels, f_min=40.0, f_max=7600.0)
        self.proj = nn.Linear(n_mels * patch, dim)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = (torch.log(self.mel(audio.float()) + 1e-6) + 6.0) / 4.0  # [N, n_mels, F]
        frames = num_frames(lengths, self.hop_length)
        F_ = feats.shape[-1]
        feats = feats * (torch.arange(F_, device=feats.device) < frames[:, None])[:, None, :]
        pad = (-F_) % self.patch
        feats = F.pad(feats, (0, pad))
        N, P = feats.shape[0], feats.shape[-1] // self.patch
        tokens = feats.view(N, self.n_mels, P, self.patch).permute(0, 2, 3, 1).reshape(N, P, -1)
        mask = torch.arange(P, device=feats.device) < num_patches(frames, self.patch)[:, None]
        return self.proj(tokens), mask


class ConversationContext(nn.Module):
    """Utterance vectors ``[N, dim]`` -> the same with conversation context (bidirectional GRU
    over the turns of each conversation, residual)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * (dim // 2), dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        B, U = index.shape
        valid = index >= 0
        seq = x.new_zeros(B, U, x.shape[-1])
        seq[valid] = x[index[valid]]
        lengths = valid.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=U)
        ctx = x.new_zeros(x.shape[0], out.shape[-1])
        ctx[index[valid]] = out[valid]
        return self.norm(x + self.out(ctx))


class OpenCLIPTextTokens(nn.Module):
    """Per-token features of an open_clip text transformer (frozen), projected to ``dim``.

    ``pretrained`` names open_clip weights (downloaded by open_clip on first use, so optional);
    None builds the architecture with random weights.
    """

    def __init__(self, model_name: str, pretrained: str | None, dim: int) -> None:
        super().__init__()
        import open_clip

        clip = open_clip.create_model(model_name, pretrained=pretrained)
        if not hasattr(clip, "token_embedding"):
            raise ValueError(f"text_encoder: expected an open_clip model with a built-in text transformer "
                             f"(e.g. 'ViT-B-32'), got {model_name!r}")
        self.token_embedding, self.transformer, self.ln_final = clip.token_embedding, clip.transformer, clip.ln_final
        self.register_buffer("positional_embedding", clip.positional_embedding.detach().clone())
        self.register_buffer("causal_mask", clip.attn_mask.clone() if clip.attn_mask is not None else None)
        for p in [*self.token_embedding.parameters(), *self.transformer.parameters(), *self.ln_final.parameters()]:
            p.requires_grad_(False)
        self.proj = nn.Linear(self.ln_final.normalized_shape[0], dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.positional_embedding.shape[0]:
            raise ValueError(f"context_length: the text encoder takes <= {self.positional_embedding.shape[0]} tokens, got {L}")
        x = self.token_embedding(ids) + self.positional_embedding[:L]
        mask = None if self.causal_mask is None else self.causal_mask[:L, :L]
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        return self.proj(x)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class ConversationEmotionModel(nn.Module):
    """Batch (see :mod:`mmoe.conversation`) -> ``{"logits" [N, C], "expert_logits" [N, X, C],
    "gate" [N, X]}`` over the utterances of the batch; see the module docstring."""

    def __init__(self, num_classes: int, modalities: list[str], dim: int, depth: int, fusion_depth: int,
                 num_heads: int, hidden_dim: int, num_experts: int, top_k: int, capacity_factor: float | None,
                 capacity_mode: str, n_mels: int, patch: int, dropout: float, text_encoder: str | None = None,
                 text_pretrained: str | None = None) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.experts = self.modalities + (["cross"] if len(self.modalities) == 2 and fusion_depth > 0 else [])
        if "speech" in self.modalities:
            self.speech_embed = LogMelPatches(dim, n_mels, patch)
        if "text" in self.modalities:
            self.text_embed = (OpenCLIPTextTokens(text_encoder, text_pretrained, dim) if text_encoder
                               else nn.Embedding(TEXT_VOCAB, dim, padding_idx=0))
        common = dict(dim=dim, num_heads=num_heads, hidden_dim=hidden_dim, num_experts=num_experts, top_k=top_k,
                      capacity_factor=capacity_factor, capacity_mode=capacity_mode, mixer="attention")
        self.encoder = MultimodalMoEBackbone(self.modalities, depth=depth, cross_modal_attention=False, **common)
        self.fusion = (MultimodalMoEBackbone(self.modalities, depth=fusion_depth, positions=False, **common)
                       if "cross" in self.experts else None)
        self.context = nn.ModuleDict({e: ConversationContext(dim) for e in self.experts})
        self.heads = nn.ModuleDict({e: nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU(),
                                                     nn.Linear(dim, num_classes)) for e in self.experts})
        self.gate = nn.Sequential(nn.Linear(len(self.experts) * dim, dim), nn.GELU(), nn.Linear(dim, len(self.experts)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens, mask = {}, {}
        if "speech" in self.modalities:
            tokens["speech"], mask["speech"] = self.speech_embed(batch["audio"], batch["audio_lengths"])
        if "text" in self.modalities:
            ids = batch["text"]
            tokens["text"], mask["text"] = self.text_embed(ids), ids != 0
        enc = self.encoder(tokens, mask=mask)
        vectors = {m: _masked_mean(enc[m], mask[m]) for m in self.modalities}
        if self.fusion is not None:
            fused = self.fusion(enc, mask=mask)
            all_tokens = torch.cat([fused[m] for m in self.modalities], dim=1)
            vectors["cross"] = _masked_mean(all_tokens, torch.cat([mask[m] for m in self.modalities], dim=1))
        index = batch["utterance_index"]
        ctx = {e: self.context[e](vectors[e], index) for e in self.experts}
        expert_logits = torch.stack([self.heads[e](ctx[e]) for e in self.experts], dim=1)  # [N, X, C]
        gate = torch.softmax(self.gate(torch.cat([ctx[e] for e in self.experts], dim=-1)), dim=-1)
        logits = (gate.unsqueeze(-1) * expert_logits).sum(1)
        return {"logits": logits, "expert_logits": expert_logits, "gate": gate}


class EmotionTask(BaseMoETask):
    """Emotion recognition in conversations (speech + text); see the module docstring.

    Args:
        class_names: emotion classes in label order (default: the six IEMOCAP-style classes).
        modalities: ``["speech", "text"]`` or one of them (the ablations).
        dim, depth, num_heads, hidden_dim, num_experts, top_k: unimodal MoE encoder (``depth``
            blocks); ``fusion_depth`` cross-modal MoE blocks (0: no cross-modal expert).
        capacity_factor, capacity_mode: MoE capacity (None: dropless) and ``"macs"``/``"static"``.
        n_mels, patch: log-mel bands and frames per speech token.
        context_length: text tokens per utterance (start/end included) used by ``predict``.
        text_encoder: an open_clip model name (e.g. ``"ViT-B-32"``) whose frozen text transformer
            encodes the text tokens; None (default): learned token embeddings.
            ``text_pretrained``: its open_clip weights tag (e.g. ``"openai"``; downloads on first
            use, so off by default).
        loss: ``"ce"`` or ``"focal"`` (with ``focal_gamma``); ``class_weights``: per-class loss weights.
        expert_loss_weight: weight of the mean per-expert loss.
        cross_gate_cost: added to the loss times the mean gate weight of the cross-modal expert:
            when a unimodal expert is as good, the gate prefers it, so the gate weights show which
            modality decided (the cross-modal expert can otherwise absorb every utterance).
        dropout: dropout in the expert heads.
        lr, weight_decay, scheduler, warmup_steps, aux_loss_weight, log_routing: see BaseMoETask.
    """

    def __init__(
        self,
        class_names: list[str] | None = None,
        modalities: list[str] | None = None,
        dim: int = 64,
        depth: int = 2,
        fusion_depth: int = 1,
        num_heads: int = 4,
        hidden_dim: int = 128,
        num_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float | None = None,
        capacity_mode: str = "macs",
        n_mels: int = 64,
        patch: int = 8,
        context_length: int = 16,
        text_encoder: str | None = None,
        text_pretrained: str | None = None,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        class_weights: list[float] | None = None,
        expert_loss_weight: float = 0.5,
        cross_gate_cost: float = 0.0,
        dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
        scheduler: str = "cosine",
        warmup_steps: int = 50,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        names = list(class_names or CLASSES)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"class_names: expected >= 2 distinct names, got {class_names!r}")
        mods = list(modalities or MODALITIES)
        if not mods or len(set(mods)) != len(mods) or any(m not in MODALITIES for m in mods):
            raise ValueError(f"modalities: expected a non-empty subset of {list(MODALITIES)}, got {modalities!r}")
        for name, value in (("dim", dim), ("depth", depth), ("num_heads", num_heads), ("patch", patch),
                            ("n_mels", n_mels), ("context_length", context_length)):
            check_positive_int(name, value)
        check_choice("loss", loss, LOSSES)
        if isinstance(fusion_depth, bool) or not isinstance(fusion_depth, int) or fusion_depth < 0:
            raise ValueError(f"fusion_depth: expected an int >= 0, got {fusion_depth!r}")
        for name, value in (("focal_gamma", focal_gamma), ("expert_loss_weight", expert_loss_weight),
                            ("cross_gate_cost", cross_gate_cost)):
            if not value >= 0:
                raise ValueError(f"{name}: expected >= 0, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if class_weights is not None and (len(class_weights) != len(names) or min(class_weights) < 0):
            raise ValueError(f"class_weights: expected {len(names)} non-negative weights, got {class_weights!r}")
        self._names, self._mods = names, mods
        super().__init__(lr=lr, weight_decay=weight_decay, scheduler=scheduler, warmup_steps=warmup_steps,
                         aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    # ------------------------------------------------------------------ hooks
    def configure_models(self) -> None:
        hp = self.hparams
        self.model = ConversationEmotionModel(
            len(self._names), self._mods, hp.dim, hp.depth, hp.fusion_depth, hp.num_heads, hp.hidden_dim,
            hp.num_experts, hp.top_k, hp.capacity_factor, hp.capacity_mode, hp.n_mels, hp.patch, hp.dropout,
            hp.text_encoder, hp.text_pretrained)

    def configure_losses(self) -> None:
        weights = self.hparams.class_weights
        self.register_buffer("class_weight", torch.tensor(weights, dtype=torch.float32) if weights else None,
                             persistent=False)

    def configure_metrics(self) -> None:
        C = len(self._names)

        def collection() -> MetricCollection:
            return MetricCollection({"weighted_f1": MulticlassF1Score(C, average="weighted"),
                                     "accuracy": MulticlassAccuracy(C, average="micro"),
                                     "f1": MulticlassF1Score(C, average=None)})

        self.train_metrics, self.val_metrics, self.test_metrics = collection(), collection(), collection()
        self.val_confusion = MulticlassConfusionMatrix(C)

    def class_names(self) -> list[str]:
        return list(self._names)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "ce":
            return F.cross_entropy(logits, target, weight=self.class_weight) if target.numel() else logits.sum() * 0
        logp = F.log_softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp.exp()) ** self.hparams.focal_gamma) * logp
        if self.class_weight is not None:
            w = self.class_weight[target]
            return (loss * w).sum() / w.sum().clamp_min(1e-12)
        return loss.mean() if target.numel() else logits.sum() * 0

    def _targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat labels of the batch's utterances and the rows that have one."""
        labels = batch["labels"][batch["utterance_index"] >= 0]
        return labels, labels >= 0

    def task_loss(self, output: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        labels, known = self._targets(batch)
        target = labels[known]
        loss = self._ce(output["logits"][known], target)
        experts = output["expert_logits"][known]
        per_expert = torch.stack([self._ce(experts[:, i], target) for i in range(experts.shape[1])]).mean()
        loss = loss + self.hparams.expert_loss_weight * per_expert
        if self.hparams.cross_gate_cost and "cross" in self.model.experts and bool(known.any()):
            loss = loss + self.hparams.cross_gate_cost * output["gate"][known][:, self.model.experts.index("cross")].mean()
        return loss

    def update_metrics(self, split: str, output: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        labels, known = self._targets(batch)
        if not bool(known.any()):
            return
        preds = output["logits"][known].argmax(-1)
        self.split_metrics(split).update(preds, labels[known])
        if split == "val":
            self.val_confusion.update(preds, labels[known])
            types = batch["types"][batch["utterance_index"] >= 0]
            gate = output["gate"].detach()
            acc = self.__dict__.setdefault("_gate_sums", {})
            for t in types.unique().tolist():
                sel = types == t
                s, n = acc.get(t, (0.0, 0))
                acc[t] = (s + gate[sel].sum(0).cpu(), n + int(sel.sum()))

    def gate_by_type(self, output_gate: torch.Tensor, types: torch.Tensor) -> dict[str, dict[str, float]]:
        """Mean gate weight of each expert per utterance type (synthetic data types)."""
        out = {}
        for t in types.unique().tolist():
            name = UTTERANCE_TYPES[t] if 0 <= t < len(UTTERANCE_TYPES) else "unknown"
            mean = output_gate[types == t].float().mean(0)
            out[name] = {e: float(w) for e, w in zip(self.model.experts, mean)}
        return out

    def validation_figures(self) -> dict[str, Any]:
        """Confusion matrix and mean gate weight per utterance type (also logged as scalars)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figures = {}
        if self.val_confusion.update_called:
            cm = self.val_confusion.compute().cpu().float()
            self.val_confusion.reset()
            norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
            fig, ax = plt.subplots(figsize=(5.5, 4.5))
            im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
            C = len(self._names)
            ax.set_xticks(range(C), self._names, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(C), self._names, fontsize=7)
            for i in range(C):
                for j in range(C):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            fig.colorbar(im, ax=ax, label="share of true class")
            fig.tight_layout()
            figures["confusion_matrix"] = fig
        sums = self.__dict__.pop("_gate_sums", {})
        if sums:
            keys = sorted(sums)
            names = [UTTERANCE_TYPES[t] if 0 <= t < len(UTTERANCE_TYPES) else "unknown" for t in keys]
            table = torch.stack([sums[t][0] / max(1, sums[t][1]) for t in keys])  # [types, X]
            for name, row in zip(names, table):
                for e, w in zip(self.model.experts, row):
                    self.log(f"val/gate_{name}_{e}", float(w))
            fig, ax = plt.subplots(figsize=(1.5 + 1.2 * table.shape[1], 1 + 0.45 * len(names)))
            im = ax.imshow(table.numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(table.shape[1]), self.model.experts)
            ax.set_yticks(range(len(names)), names)
            for i in range(table.shape[0]):
                for j in range(table.shape[1]):
                    ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
            ax.set_xlabel("expert")
            ax.set_ylabel("utterance type")
            fig.colorbar(im, ax=ax, label="mean gate weight")
            fig.tight_layout()
            figures["gate_by_utterance_type"] = fig
        return figures

    # ------------------------------------------------------------------ inference
    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """``mmoe predict``: class probabilities and gate weights of the batch's utterances
        (rows in conversation-major order, see ``utterance_index``)."""
        out = self(batch)
        return {"probabilities": torch.softmax(out["logits"].float(), -1), "gate": out["gate"],
                "utterance_index": batch["utterance_index"]}

    @torch.no_grad()
    def predict(self, conversation: list[dict]) -> list[dict[str, Any]]:
        """Emotion of every utterance of ``conversation``, in order.

        ``conversation``: list of ``{"audio": 1-D array/tensor or wav path, "sample_rate": int
        (required with an array), "text": str}``. Audio at another rate is resampled to 16 kHz and
        cropped to 10 s. Returns ``[{"label": str, "probabilities": {class: p}, "gate": {expert: w}}]``.
        """
        utterances = check_conversation(conversation)
        batch = collate_conversations([utterances], self.hparams.context_length, SAMPLE_RATE, max_seconds=10.0)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        was_training = self.training
        self.eval()
        out = self.model(batch)
        self.train(was_training)
        probs = torch.softmax(out["logits"].float(), -1).cpu().numpy()
        gate = out["gate"].float().cpu().numpy()
        results = []
        for p, g in zip(probs, gate):
            results.append({"label": self._names[int(np.argmax(p))],
                            "probabilities": {n: float(v) for n, v in zip(self._names, p)},
                            "gate": {e: float(w) for e, w in zip(self.model.experts, g)}})
        return results
