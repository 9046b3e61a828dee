"""Readers for emotion-recognition-in-conversation datasets (IEMOCAP, MELD).

Both readers return a list of conversations; a conversation is a list of utterance dicts in
temporal order::

    {"id": str, "speaker": str, "text": str, "label": int, "audio": str}

``label`` indexes :data:`IEMOCAP_CLASSES` / :data:`MELD_CLASSES`; ``audio`` is the absolute path of
the utterance's audio file (load it with :func:`read_wav`). Utterances without a wav file are skipped.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmoe.inputs.audio import read_audio

IEMOCAP_CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "excited", "frustrated")
MELD_CLASSES: tuple[str, ...] = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")

# IEMOCAP annotation codes kept by the usual 6-class protocol; every other code is dropped.
_IEMOCAP_CODES = {"neu": 0, "hap": 1, "sad": 2, "ang": 3, "exc": 4, "fru": 5}
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
_EMO_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\w+)\s+\[")
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
_TRANS_LINE = re.compile(r"^(\S+)\s*\[[^\]]*\]:\s?(.*)$")
_MELD_SPLITS = ("train", "dev", "test")
_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 waveform and its sample rate of a WAV/FLAC/OGG file (the name is historical).

    Read by :func:`mmoe.inputs.audio.read_audio` (soundfile; integer PCM to [-1, 1), multi-channel
    audio averaged to mono, a size cap from the header). Raises ValueError naming the path for a
    missing, unreadable or empty file.
    """
    return read_audio(path, arg="path", downmix=True)


def _read_text(path: Path) -> str:
    """UTF-8 text (BOM stripped); invalid bytes become U+FFFD instead of failing."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace")


# ------------------------------------------------------------------------------------- IEMOCAP
def read_iemocap(root: str | os.PathLike, sessions: Sequence[int]) -> list[list[dict]]:
    """Conversations of IEMOCAP sessions ``sessions`` (subset of 1..5), dialogs sorted by name.

    Expects the release layout ``Session{n}/dialog/{EmoEvaluation,transcriptions}/<dialog>.txt``
    and ``Session{n}/sentences/wav/<dialog>/<utt>.wav``. Uses the 6-class protocol (neu, hap, sad,
    ang, exc, fru; other labels such as xxx/sur/fea/dis/oth are dropped); ``speaker`` is the
    utterance's gender letter (``F``/``M``); utterances are ordered by start time. An utterance
    with no transcription line gets ``text=""``.
    """
    if not sessions or any(s not in range(1, 6) for s in sessions):
        raise ValueError(f"sessions must be a non-empty subset of 1..5, got {list(sessions)}")
    root = Path(root).absolute()
    conversations: list[tuple[str, list[dict]]] = []
    for n in sorted(set(sessions)):
        session = root / f"Session{n}"
        if not session.is_dir():
            raise FileNotFoundError(f"IEMOCAP session folder not found: {session}")
        emo_dir = session / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            raise FileNotFoundError(f"IEMOCAP annotation folder not found: {emo_dir}")
        for emo_file in sorted(emo_dir.glob("*.txt")):
            if emo_file.name.startswith("."):  # macOS "._" resource forks shipped in some copies
                continue
            dialog = emo_file.stem
            utts = _iemocap_dialog(session, dialog, emo_file)
            if utts:
                conversations.append((dialog, utts))
    conversations.sort(key=lambda c: c[0])
    return [utts for _, utts in conversations]


def _iemocap_dialog(session: Path, dialog: str, emo_file: Path) -> list[dict]:
    texts: dict[str, str] = {}
    trans_file = session / "dialog" / "transcriptions" / f"{dialog}.txt"
    if trans_file.is_file():
        for line in _read_text(trans_file).splitlines():
            if m := _TRANS_LINE.match(line.strip()):
                texts[m.group(1)] = m.group(2).strip()
    wav_dir = session / "sentences" / "wav" / dialog
    timed: list[tuple[float, dict]] = []
    for line in _read_text(emo_file).splitlines():
        m = _EMO_LINE.match(line.strip())
        if m is None or m.group(4) not in _IEMOCAP_CODES:
            continue
        utt = m.group(3)
        wav = wav_dir / f"{utt}.wav"
        if not wav.is_file():
            continue
        timed.append((float(m.group(1)), {
            "id": utt,
            "speaker": utt.rsplit("_", 1)[-1][:1],
            "text": texts.get(utt, ""),
            "label": _IEMOCAP_CODES[m.group(4)],
            "audio": str(wav),
        }))
    timed.sort(key=lambda t: (t[0], t[1]["id"]))
    return [u for _, u in timed]


# ---------------------------------------------------------------------------------------- MELD
def read_meld(root: str | os.PathLike, split: str) -> list[list[dict]]:
    """Conversations of MELD split ``"train" | "dev" | "test"``, in Dialogue_ID order.

    Reads ``root/{split}_sent_emo.csv`` (UTF-8; invalid bytes such as a stray cp1252 ``\\x92`` are
    replaced rather than failing). Audio is expected at ``root/{split}_wav/dia{D}_utt{U}.wav``: MELD
    ships mp4 clips only, so extract it first, e.g.
    ``ffmpeg -i dia0_utt0.mp4 -vn -ac 1 -ar 16000 dia0_utt0.wav``. Rows without a wav file are
    skipped. Raises ValueError for an unknown split or emotion, FileNotFoundError for a missing csv
    or wav folder.
    """
    if split not in _MELD_SPLITS:
        raise ValueError(f"split must be one of {_MELD_SPLITS}, got {split!r}")
    root = Path(root).absolute()
    csv_path = root / f"{split}_sent_emo.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"MELD csv not found: {csv_path}")
    wav_dir = root / f"{split}_wav"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"MELD wav folder not found: {wav_dir} (extract audio from the mp4 clips)")
    reader = csv.DictReader(io.StringIO(_read_text(csv_path), newline=""))
    missing = [c for c in _MELD_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}")
    dialogs: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    for row_no, row in enumerate(reader, start=1):
        emotion = row["Emotion"].strip().lower()
        if emotion not in MELD_CLASSES:
            raise ValueError(f"{csv_path}: row {row_no}: unknown emotion {row['Emotion']!r}, expected one of {MELD_CLASSES}")
        try:
            d, u = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except ValueError as e:
            raise ValueError(f"{csv_path}: row {row_no}: bad Dialogue_ID/Utterance_ID: {e}") from e
        wav = wav_dir / f"dia{d}_utt{u}.wav"
        if not wav.is_file():
            continue
        dialogs[d].append((u, {
            "id": f"dia{d}_utt{u}",
            "speaker": row["Speaker"].strip(),
            "text": row["Utterance"].strip(),
            "label": MELD_CLASSES.index(emotion),
            "audio": str(wav),
        }))
    return [[utt for _, utt in sorted(dialogs[d], key=lambda t: t[0])] for d in sorted(dialogs)]
