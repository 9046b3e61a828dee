"""``mmoe predict`` output of the emotion task."""
from __future__ import annotations

from typing import Any

from mmoe.prediction import PredictionWriter


class EmotionWriter(PredictionWriter):
    """``predictions.jsonl``: one JSON line per turn, in order: ``name`` (the conversation), ``turn``
    (0-based), ``text`` (when the turn has text), ``audio`` (its file, when read from one), ``label``,
    ``probabilities`` and ``gate``."""

    def write(self, name: str, inputs: dict[str, Any], result: list[dict[str, Any]]) -> None:
        turns = inputs["conversation"]
        turns = [turns] if isinstance(turns, str) else turns
        for k, (turn, out) in enumerate(zip(turns, result)):
            turn = {"text": turn} if isinstance(turn, str) else turn
            record: dict[str, Any] = {"name": name, "turn": k}
            if turn.get("text") is not None:
                record["text"] = turn["text"]
            if isinstance(turn.get("audio"), str):
                record["audio"] = turn["audio"]
            self.append_jsonl("predictions.jsonl", {**record, **out})
