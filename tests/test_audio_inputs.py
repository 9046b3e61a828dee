"""The shared audio input rules (mmoe.inputs.audio) and every task's predict input preparation on them:
integer PCM against the same audio as float, file formats and caps, layouts, sample-rate bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmoe.inputs.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, load_waveform, read_audio, resample
from mmoe.tasks.emotion.io import EmotionPreprocess, prepare_conversation
from mmoe.tasks.separation.io import SeparationPreprocess, finish_audio, prepare_audio

PCM_DTYPES = [np.int8, np.int16, np.int32, np.uint8, np.uint16]
TORCH = {np.int8: torch.int8, np.int16: torch.int16, np.int32: torch.int32, np.uint8: torch.uint8,
         np.uint16: torch.uint16}


def _pcm(wave: np.ndarray, dtype: type) -> tuple[np.ndarray, float]:
    """``wave`` in [-1, 1) as integer PCM of ``dtype`` and one quantisation step in float units."""
    info = np.iinfo(dtype)
    half = (int(info.max) + 1) // 2 if info.min == 0 else int(info.max) + 1
    offset = half if info.min == 0 else 0
    return (np.round(wave * half) + offset).clip(info.min, info.max).astype(dtype), 1.0 / half


def _separation_mixture(audio, rate: int) -> torch.Tensor:
    return prepare_audio(SeparationPreprocess(sample_rate=8000), audio, rate)[0]["mixture"]


def _emotion_audio(audio, rate: int) -> torch.Tensor:
    batch, _ = prepare_conversation(EmotionPreprocess(max_seconds=None), [{"audio": audio, "sample_rate": rate,
                                                                           "text": ""}])
    return batch["audio"][0, : int(batch["audio_lengths"][0])]


PREPARERS = {"separation": _separation_mixture, "emotion": _emotion_audio}


@pytest.mark.parametrize("task", list(PREPARERS))
@pytest.mark.parametrize("dtype", PCM_DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_pcm_gives_the_same_waveform_as_float(task: str, dtype: type) -> None:
    """Issue 26 finding 4 / issue 37 item 2: every PCM dtype, numpy and torch, at the model's rate and resampled."""
    rng = np.random.default_rng(0)
    wave = np.clip(rng.normal(0, 0.3, 1600), -0.99, 0.99)
    pcm, step = _pcm(wave, dtype)
    prepare = PREPARERS[task]
    for rate in (8000, 16000):
        ref = prepare(wave.astype(np.float32), rate).numpy()
        for given in (pcm, torch.from_numpy(pcm).to(TORCH[dtype])):
            got = prepare(given, rate)
            assert got.dtype == torch.float32
            # one quantisation step, plus the resampler's gain on it
            np.testing.assert_allclose(got.numpy(), ref, atol=2 * step + 1e-6, err_msg=f"{task} {rate} Hz")
        assert abs(float(prepare(pcm, rate).mean()) - float(ref.mean())) < step + 1e-6  # no offset


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_separation_integer_tensor_output_is_float32(dtype: type) -> None:
    """Integer input comes back float32 (the docstring's rule), not float64."""
    pre = SeparationPreprocess(sample_rate=8000)
    pcm, _ = _pcm(np.zeros(100), dtype)
    for given in (pcm, torch.from_numpy(pcm).to(TORCH[dtype])):
        inputs, context = prepare_audio(pre, given, 8000)
        out = finish_audio(pre, {"sources": torch.zeros(1, 2, inputs["mixture"].shape[-1])}, context)
        assert out.dtype in (np.float32, torch.float32)


@pytest.mark.parametrize("shape", [(8000, 2), (400, 1), (1000, 6)])
def test_separation_refuses_channels_last_layout(shape: tuple[int, int]) -> None:
    """Issue 26 finding 5: [samples, channels] is not `samples` tiny mixtures."""
    with pytest.raises(ValueError, match=r"audio: .*\[samples, channels\].*audio\[:, 0\]"):
        _separation_mixture(np.zeros(shape, np.float32), 8000)
    assert _separation_mixture(np.zeros((2, 500), np.float32), 8000).shape == (2, 500)  # a batch stays one


def test_emotion_refuses_channels_last_layout() -> None:
    with pytest.raises(ValueError, match=r"\['audio'\]: .*1-D.*\[samples, channels\]"):
        _emotion_audio(np.zeros((800, 2), np.float32), 16000)


@pytest.mark.parametrize("rate", [1, 999, 10**9, 384_001, True, 8000.0])
@pytest.mark.parametrize("task", list(PREPARERS))
def test_sample_rate_is_bounded(task: str, rate: object) -> None:
    with pytest.raises(ValueError, match=rf"sample_rate.*: expected a positive int \(Hz\) in "
                                         rf"{MIN_SAMPLE_RATE}\.\.{MAX_SAMPLE_RATE}"):
        PREPARERS[task](np.zeros(100, np.float32), rate)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "PCM_U8"), ("FLAC", "PCM_16"),
                                          ("OGG", "VORBIS")])
def test_files_in_every_format_match_the_array(tmp_path: Path, fmt: str, subtype: str) -> None:
    """WAV, FLAC and OGG through both tasks (emotion read WAV only before, with scipy)."""
    t = np.arange(4000) / 8000
    wave = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(str(path), wave, 8000, format=fmt, subtype=subtype)
    atol = 0.05 if subtype == "VORBIS" else 2 / 128  # lossy / 8-bit
    for task, prepare in PREPARERS.items():
        from_file = prepare(str(path), None)
        np.testing.assert_allclose(from_file.numpy(), prepare(wave, 8000).numpy(), atol=atol, err_msg=task)


def test_read_audio_errors_name_argument_and_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(ValueError, match=r"mix: could not read .*junk\.wav"):
        read_audio(junk, arg="mix")
    with pytest.raises(ValueError, match=r"mix: expected an existing audio file"):
        read_audio(tmp_path / "none.wav", arg="mix")
    aiff = tmp_path / "a.aiff"
    sf.write(str(aiff), np.zeros(10, np.float32), 8000, format="AIFF")
    with pytest.raises(ValueError, match=r"mix: expected one of the formats"):
        read_audio(aiff, arg="mix")
    stereo = tmp_path / "s.flac"
    sf.write(str(stereo), np.stack([np.full(50, 0.5), np.full(50, -0.25)], 1), 8000)
    with pytest.raises(ValueError, match="mix: expected a mono file, got 2 channels"):
        read_audio(stereo, arg="mix")
    np.testing.assert_allclose(read_audio(stereo, downmix=True)[0], np.full(50, 0.125), atol=1e-4)
    slow = tmp_path / "slow.wav"
    sf.write(str(slow), np.zeros(10, np.float32), 100)
    with pytest.raises(ValueError, match=r"in 1000\.\.384000"):
        read_audio(slow)


def test_read_audio_caps_declared_samples_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros((1000, 2), np.float32), 8000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file over the cap")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(ValueError, match=r"audio: .*1000 frames x 2 channels.*cap of 1999 samples \(max_samples\)"):
        read_audio(path, arg="audio", downmix=True, max_samples=1999)
    with pytest.raises(ValueError, match="max_samples"):
        load_waveform(str(path), None, downmix=True, max_samples=1999)


def test_resample_matches_a_sine_at_the_target_rate() -> None:
    n = np.arange(16000)
    x = torch.from_numpy(np.sin(2 * np.pi * 440 * n / 16000)).double()
    y = resample(x[None], 16000, 8000)[0]
    assert y.dtype == torch.float32 and y.shape == (8000,)
    expected = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    np.testing.assert_allclose(y.numpy()[200:-200], expected[200:-200], atol=2e-3)


@pytest.mark.parametrize("task", list(PREPARERS))
def test_rates_needing_a_huge_resampling_filter_are_refused(task: str) -> None:
    """torchaudio's filter grows with the product of the gcd-reduced rates (383999 -> 16000 Hz: 24 GB)."""
    with pytest.raises(ValueError, match=r"sample_rate.*: resampling 383999 Hz to \d+ Hz needs a \d+-entry filter"):
        PREPARERS[task](np.zeros(100, np.float32), 383_999)
    assert PREPARERS[task](np.zeros(441, np.float32), 44100).shape[-1] in (80, 160)  # usual rates pass
