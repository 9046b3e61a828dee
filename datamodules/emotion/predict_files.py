"""The emotion task's input files for ``mmoe predict`` (``predict_path``).

* ``.txt``: one conversation, a text-only turn per non-empty line (UTF-8);
* ``.json``: one conversation, a list of turns: strings (text only) or objects with ``"text"``
  and/or ``"audio"`` (an audio file path, relative to the JSON file's folder and inside it);
* ``.wav``/``.flac``/``.ogg``: a one-turn, speech-only conversation.

Text files are refused above :data:`MAX_TEXT_BYTES`; audio files follow :mod:`mmoe.inputs.audio`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmoe.inputs.audio import AUDIO_SUFFIXES
from mmoe.inputs.image import inside_root

SUFFIXES = (".txt", ".json") + AUDIO_SUFFIXES
MAX_TEXT_BYTES = 4 * 2**20
MAX_TURNS = 10_000


def _text(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"predict_path: {str(path)!r} is {size} bytes; conversations are read up to "
                         f"{MAX_TEXT_BYTES} bytes")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"predict_path: {str(path)!r} is not UTF-8 text ({e})") from None


def read_conversation(path: str | os.PathLike) -> dict[str, Any]:
    """``predict``'s keyword arguments (``conversation``) from one file (see the module docstring)."""
    path = Path(path)
    low = path.name.lower()
    if low.endswith(AUDIO_SUFFIXES):
        return {"conversation": [{"audio": str(path)}]}
    if low.endswith(".txt"):
        turns: list[Any] = [line.strip() for line in _text(path).splitlines() if line.strip()]
    else:
        try:
            turns = json.loads(_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"predict_path: {str(path)!r} is not valid JSON ({e})") from None
        if not isinstance(turns, list):
            raise ValueError(f"predict_path: {str(path)!r}: expected a JSON list of turns, got {type(turns).__name__}")
        for i, turn in enumerate(turns):
            if isinstance(turn, dict):
                unknown = set(turn) - {"text", "audio"}
                if unknown:
                    raise ValueError(f"predict_path: {str(path)!r}[{i}]: unknown keys {sorted(unknown)}; "
                                     "expected 'text' and/or 'audio'")
                if "audio" in turn:
                    if not isinstance(turn["audio"], str):
                        raise ValueError(f"predict_path: {str(path)!r}[{i}]['audio']: expected a file path, got "
                                         f"{type(turn['audio']).__name__}")
                    turns[i] = {**turn, "audio": str(inside_root(path.parent / turn["audio"], path.parent,
                                                                     f"predict_path {str(path)!r}[{i}]['audio']"))}
    if not turns:
        raise ValueError(f"predict_path: {str(path)!r} holds no turn")
    if len(turns) > MAX_TURNS:
        raise ValueError(f"predict_path: {str(path)!r} holds {len(turns)} turns; at most {MAX_TURNS}")
    return {"conversation": turns}
