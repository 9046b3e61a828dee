"""Emotion readers: wav decoding, IEMOCAP and MELD layouts written into tmp_path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from mmoe.settings import MoESettings
from mmoe.datamodules.emotion.readers import IEMOCAP_CLASSES, MELD_CLASSES, read_iemocap, read_meld, read_wav

RATE = 16_000


def _sine(seconds: float = 0.2, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return amp * np.sin(2 * np.pi * freq * t)


def _write_int16(path: Path, x: np.ndarray | None = None) -> np.ndarray:
    x = _sine() if x is None else x
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, RATE, np.round(x * 32767).astype(np.int16))
    return x


# -------------------------------------------------------------------------------------- read_wav
def test_read_wav_int16_values_and_rate(tmp_path: Path) -> None:
    x = _write_int16(tmp_path / "a.wav")
    wav, rate = read_wav(tmp_path / "a.wav")
    assert rate == RATE and wav.dtype == np.float32 and wav.shape == x.shape
    np.testing.assert_allclose(wav, x, atol=2 / 32768)


def test_read_wav_float32_stereo_averaged_to_mono(tmp_path: Path) -> None:
    left, right = _sine(freq=300, amp=0.8), _sine(freq=500, amp=0.4)
    wavfile.write(tmp_path / "s.wav", 8000, np.stack([left, right], axis=1).astype(np.float32))
    wav, rate = read_wav(str(tmp_path / "s.wav"))
    assert rate == 8000 and wav.ndim == 1 and wav.dtype == np.float32
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-6)


def test_read_wav_int32_and_uint8_scaled_into_unit_range(tmp_path: Path) -> None:
    x = _sine(amp=0.9)
    wavfile.write(tmp_path / "i32.wav", RATE, np.round(x * (2**31 - 1)).astype(np.int32))
    wavfile.write(tmp_path / "u8.wav", RATE, np.round(x * 127 + 128).astype(np.uint8))
    full = np.array([-32768, 32767, 0], dtype=np.int16)
    wavfile.write(tmp_path / "full.wav", RATE, full)
    np.testing.assert_allclose(read_wav(tmp_path / "i32.wav")[0], x, atol=1e-6)
    np.testing.assert_allclose(read_wav(tmp_path / "u8.wav")[0], x, atol=2 / 128)
    wav, _ = read_wav(tmp_path / "full.wav")
    assert wav.min() == -1.0 and 0.999 < wav.max() <= 1.0


def test_read_wav_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.wav"):
        read_wav(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"this is not a RIFF file at all")
    with pytest.raises(ValueError, match="junk.wav"):
        read_wav(tmp_path / "junk.wav")
    wavfile.write(tmp_path / "empty.wav", RATE, np.zeros(0, dtype=np.int16))
    with pytest.raises(ValueError, match="empty.wav"):
        read_wav(tmp_path / "empty.wav")


def test_read_wav_reads_flac_and_ogg_through_the_shared_reader(tmp_path: Path) -> None:
    """Issue 27: emotion read WAV only (scipy); FLAC and OGG now go through mmoe.inputs.audio."""
    import soundfile as sf

    x = _sine(amp=0.6)
    sf.write(str(tmp_path / "a.flac"), x, RATE, subtype="PCM_16")
    sf.write(str(tmp_path / "a.ogg"), x, RATE, format="OGG", subtype="VORBIS")
    wav, rate = read_wav(tmp_path / "a.flac")
    assert rate == RATE and wav.dtype == np.float32
    np.testing.assert_allclose(wav, x, atol=2 / 32768)
    np.testing.assert_allclose(read_wav(tmp_path / "a.ogg")[0], x, atol=0.05)


# --------------------------------------------------------------------------------------- IEMOCAP
EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _emo_block(start: float, end: float, utt: str, code: str) -> str:
    return (
        f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]\n"
        f"C-E1:\tNeutral;\t()\nC-E2:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  2;\t()\n\n"
    )


def _write_iemocap_dialog(root: Path, session: int, dialog: str, utts: list[tuple], no_wav: set[str] = set()) -> None:
    """utts: (utt_id, start, code, text) in the order they are written to the files."""
    sess = root / f"Session{session}"
    emo = sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    trans = sess / "dialog" / "transcriptions" / f"{dialog}.txt"
    emo.parent.mkdir(parents=True, exist_ok=True)
    trans.parent.mkdir(parents=True, exist_ok=True)
    emo.write_text(EMO_HEADER + "".join(_emo_block(s, s + 1.5, u, c) for u, s, c, _ in utts))
    lines = [f"{u} [{s:08.4f}-{s + 1.5:08.4f}]: {t}" for u, s, _, t in sorted(utts, key=lambda x: x[1])]
    lines.insert(1, "M_noise [005.0000-005.5000]: [BREATHING]")
    trans.write_text("\n".join(lines) + "\n")
    for u, *_ in utts:
        if u not in no_wav:
            _write_int16(sess / "sentences" / "wav" / dialog / f"{u}.wav")


@pytest.fixture
def iemocap(tmp_path: Path) -> Path:
    d = "Ses01F_impro01"
    _write_iemocap_dialog(tmp_path, 1, d, [
        (f"{d}_F000", 6.2901, "neu", "Excuse me."),
        (f"{d}_M000", 2.1000, "exc", "Yeah, hi!"),
        (f"{d}_F001", 9.0000, "xxx", "dropped (no agreement)"),
        (f"{d}_F002", 12.000, "ang", "no wav for me"),
        (f"{d}_M001", 10.500, "sur", "dropped (surprise)"),
        (f"{d}_M002", 1.0000, "fru", "Is there a problem?"),
        (f"{d}_F003", 14.250, "hap", "It’s fine."),
        (f"{d}_M003", 13.000, "sad", "Oh."),
    ], no_wav={f"{d}_F002"})
    _write_iemocap_dialog(tmp_path, 1, "Ses01M_script01_1", [("Ses01M_script01_1_F000", 1.0, "oth", "x")])
    _write_iemocap_dialog(tmp_path, 1, "Ses01F_script02_2", [("Ses01F_script02_2_M000", 3.0, "ang", "Stop!")])
    _write_iemocap_dialog(tmp_path, 2, "Ses02M_impro03", [("Ses02M_impro03_F000", 0.5, "sad", "Sorry.")])
    return tmp_path


def test_iemocap_order_labels_speakers_text(iemocap: Path) -> None:
    convs = read_iemocap(iemocap, [1])
    assert [[u["id"][-4:] for u in c] for c in convs] == [["M002", "M000", "F000", "M003", "F003"], ["M000"]]
    first = convs[0]
    assert [IEMOCAP_CLASSES[u["label"]] for u in first] == ["frustrated", "excited", "neutral", "sad", "happy"]
    assert [u["speaker"] for u in first] == ["M", "M", "F", "M", "F"]
    assert [u["text"] for u in first] == ["Is there a problem?", "Yeah, hi!", "Excuse me.", "Oh.", "It’s fine."]
    assert convs[1][0]["id"] == "Ses01F_script02_2_M000" and IEMOCAP_CLASSES[convs[1][0]["label"]] == "angry"


def test_iemocap_audio_paths_absolute_and_readable(iemocap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(iemocap)
    convs = read_iemocap(".", [1, 2])
    for u in (u for c in convs for u in c):
        p = Path(u["audio"])
        assert p.is_absolute() and p.name == f"{u['id']}.wav" and p.is_file()
        assert p.parent.name == u["id"].rsplit("_", 1)[0]
    assert read_wav(convs[0][0]["audio"])[1] == RATE


def test_iemocap_multiple_sessions_sorted_by_dialog(iemocap: Path) -> None:
    convs = read_iemocap(iemocap, (2, 1))
    assert [c[0]["id"].rsplit("_", 1)[0] for c in convs] == ["Ses01F_impro01", "Ses01F_script02_2", "Ses02M_impro03"]
    assert [u["id"] for u in read_iemocap(iemocap, [2])[0]] == ["Ses02M_impro03_F000"]


def test_iemocap_errors(iemocap: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Session3"):
        read_iemocap(iemocap, [1, 3])
    for bad in ([], [0], [6], [1, 7]):
        with pytest.raises(ValueError, match="sessions"):
            read_iemocap(iemocap, bad)


# ------------------------------------------------------------------------------------------ MELD
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]


def _write_meld(root: Path, split: str, rows: list[tuple], no_wav: set[tuple[int, int]] = set()) -> Path:
    """rows: (dialogue_id, utterance_id, speaker, emotion, text)."""
    path = root / f"{split}_sent_emo.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(MELD_HEADER)
        for i, (d, u, spk, emo, text) in enumerate(rows, start=1):
            w.writerow([i, text, spk, emo, "neutral", d, u, 3, 19, "00:14:38,127", "00:14:40,378"])
    (root / f"{split}_wav").mkdir(exist_ok=True)
    for d, u, *_ in rows:
        if (d, u) not in no_wav:
            _write_int16(root / f"{split}_wav" / f"dia{d}_utt{u}.wav")
    return path


def test_meld_grouping_order_labels_text(tmp_path: Path) -> None:
    _write_meld(tmp_path, "dev", [
        (10, 2, "Ross", "sadness", "Oh, that’s… great."),
        (2, 10, "Monica", "joy", "Last one"),
        (2, 0, "Chandler", "neutral", "Could this BE any\nmore \u0092awkward?"),
        (10, 0, "Rachel", "Surprise", "Wait, what?"),
        (2, 2, "Joey", "anger", "How you doin’?"),
        (10, 1, "Phoebe", "fear", "no wav"),
    ], no_wav={(10, 1)})
    convs = read_meld(tmp_path, "dev")
    assert [[u["id"] for u in c] for c in convs] == [["dia2_utt0", "dia2_utt2", "dia2_utt10"], ["dia10_utt0", "dia10_utt2"]]
    assert [MELD_CLASSES[u["label"]] for c in convs for u in c] == ["neutral", "anger", "joy", "surprise", "sadness"]
    assert [u["speaker"] for c in convs for u in c] == ["Chandler", "Joey", "Monica", "Rachel", "Ross"]
    assert convs[0][0]["text"] == "Could this BE any\nmore \u0092awkward?"
    assert convs[0][1]["text"] == "How you doin’?" and convs[1][1]["text"] == "Oh, that’s… great."
    for u in (u for c in convs for u in c):
        assert Path(u["audio"]) == (tmp_path / "dev_wav" / f"{u['id']}.wav").absolute() and Path(u["audio"]).is_file()


def test_meld_invalid_utf8_bytes_replaced(tmp_path: Path) -> None:
    path = _write_meld(tmp_path, "test", [(0, 0, "Ross", "disgust", "It is PLACEHOLDER")])
    path.write_bytes(path.read_bytes().replace(b"PLACEHOLDER", b"Ross\x92s"))
    [[utt]] = read_meld(tmp_path, "test")
    assert utt["text"] == "It is Ross\ufffds" and MELD_CLASSES[utt["label"]] == "disgust"


def test_meld_unknown_emotion_names_file_row_value(tmp_path: Path) -> None:
    _write_meld(tmp_path, "train", [(0, 0, "A", "joy", "ok"), (0, 1, "B", "contempt", "hmm")])
    with pytest.raises(ValueError, match=r"train_sent_emo\.csv.*row 2.*contempt"):
        read_meld(tmp_path, "train")


def test_meld_bad_split_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split.*'valid'"):
        read_meld(tmp_path, "valid")
    with pytest.raises(FileNotFoundError, match=r"train_sent_emo\.csv"):
        read_meld(tmp_path, "train")
    _write_meld(tmp_path, "train", [(0, 0, "A", "joy", "ok")])
    assert len(read_meld(tmp_path, "train")) == 1
    (tmp_path / "train_wav" / "dia0_utt0.wav").unlink()
    assert read_meld(tmp_path, "train") == []
    (tmp_path / "train_wav").rmdir()
    with pytest.raises(FileNotFoundError, match="train_wav"):
        read_meld(tmp_path, "train")


def test_datamodule_reads_meld_and_iemocap_layouts_into_model_batches(tmp_path: Path, iemocap: Path) -> None:
    import torch

    from mmoe.datamodules import EmotionDataModule
    from mmoe.tasks import EmotionTask

    meld = tmp_path / "meld"
    meld.mkdir()
    for split, dia in (("train", 0), ("dev", 1), ("test", 2)):
        _write_meld(meld, split, [(dia, 0, "Ross", "joy", "Hi!"), (dia, 1, "Rachel", "disgust", "Ew."),
                                  (dia + 10, 0, "Joey", "fear", "How you doin'?")])
    dm = EmotionDataModule(dataset="meld", root=str(meld), batch_size=2)
    assert dm.num_classes == 7 and dm.class_names == list(MELD_CLASSES)
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].tolist() == [[MELD_CLASSES.index("joy"), MELD_CLASSES.index("disgust")],
                                        [MELD_CLASSES.index("fear"), -1]]
    assert batch["audio_lengths"].tolist() == [int(0.2 * RATE)] * 3
    task = EmotionTask(preprocess=dm.preprocess, dim=16, depth=1, num_heads=2, hidden_dim=16,
                       moe=MoESettings(num_experts=4), n_mels=16)
    out = task(batch)
    assert out["logits"].shape == (3, 7) and torch.isfinite(task.task_loss(out, batch))

    for session in (3, 4, 5):  # sessions 1-4 train (+ val), 5 test
        _write_iemocap_dialog(iemocap, session, f"Ses0{session}F_impro01", [(f"Ses0{session}F_impro01_F000", 1.0, "hap", "Great.")])
    dm = EmotionDataModule(dataset="iemocap", root=str(iemocap), batch_size=8, val_fraction=0.0, max_turns=2)
    splits = dm.prepare_splits()
    assert [u["id"] for c in splits["test"] for u in c] == ["Ses05F_impro01_F000"]
    assert all(len(c) <= 2 for c in splits["train"])  # long dialogs cut into windows of max_turns
    train_ids = [u["id"] for c in splits["train"] for u in c]
    assert "Ses01F_impro01_M002" in train_ids and not any(i.startswith("Ses05") for i in train_ids)
