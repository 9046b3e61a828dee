"""What emotion predict needs: the preprocessing config and the input/output functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmoe.datamodules.emotion.conversation import check_conversation, collate_conversations
from mmoe.datamodules.emotion.preprocess import EmotionPreprocess


def prepare_conversation(pre: EmotionPreprocess, conversation: Any) -> tuple[dict[str, torch.Tensor], None]:
    """Check a conversation and batch it exactly as the datamodule does."""
    utterances = check_conversation(conversation)
    batch = collate_conversations([utterances], pre.context_length, pre.sample_rate, pre.max_seconds)
    return batch, None


def finish_conversation(pre: EmotionPreprocess, experts: list[str], output: dict[str, torch.Tensor]
                        ) -> list[dict[str, Any]]:
    """Per utterance: ``{"label", "probabilities": {class: p}, "gate": {expert: w}}``."""
    probs = torch.softmax(output["logits"].float(), -1).cpu().numpy()
    gate = output["gate"].float().cpu().numpy()
    names = pre.class_names
    return [{"label": names[int(np.argmax(p))], "probabilities": {n: float(v) for n, v in zip(names, p)},
             "gate": {e: float(w) for e, w in zip(experts, g)}} for p, g in zip(probs, gate)]
