"""Separation data: eSpeak NG synthesis through ctypes, the embedded corpus and its splits, mixing,
and the LibriMix / WSJ0-2mix readers on tiny files written in those layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmoe.datamodules.separation import speech
from mmoe.datamodules.separation.datamodule import SeparationDataModule, mix_pair
from mmoe.datamodules.separation.espeak import ESpeak, Voice
from mmoe.datamodules.separation.readers import load_record, read_librimix, read_wsj0_2mix


def f0_autocorr(x: np.ndarray, rate: int) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames by autocorrelation (60..400 Hz)."""
    n = int(0.04 * rate)
    pitches = []
    for s in range(0, len(x) - n, n):
        f = x[s:s + n] - x[s:s + n].mean()
        if f.std() < 0.3 * x.std():
            continue
        ac = np.correlate(f, f, "full")[n - 1:]
        lo, hi = rate // 400, rate // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches)) if pitches else 0.0


def test_espeak_synthesises_voiced_speech_with_the_requested_pitch() -> None:
    engine = ESpeak.get()
    text = "The old man carried a heavy wooden box near the river early this morning."
    low = engine.synthesize(text, Voice("en-us", pitch=10, rate=170))
    high = engine.synthesize(text, Voice("en-us", pitch=90, rate=170))
    fast = engine.synthesize(text, Voice("en-us", pitch=50, rate=300))
    assert engine.sample_rate == 22050
    for wav in (low, high, fast):
        assert wav.dtype == np.float32 and np.isfinite(wav).all() and 0.01 < wav.std() < 1
    assert 2.0 < len(low) / engine.sample_rate < 8.0  # a sentence, not a click
    assert len(fast) < 0.75 * len(low)  # the rate parameter reaches the synthesiser
    f_low, f_high = f0_autocorr(low, engine.sample_rate), f0_autocorr(high, engine.sample_rate)
    assert 60 < f_low < f_high < 400, (f_low, f_high)  # voiced speech, pitch follows the setting
    with pytest.raises(ValueError, match="voice.name"):
        engine.synthesize("hello", Voice("no-such-voice"))


def test_splits_hold_out_test_sentences_and_voice_variants() -> None:
    train_s, train_v, _ = speech.split_plan("train", 64, seed=0)
    val_s, val_v, _ = speech.split_plan("val", 32, seed=0)
    test_s, test_v, spk = speech.split_plan("test", 32, seed=0)
    assert not set(test_s) & set(train_s) and not set(test_s) & set(val_s) and not set(val_s) & set(train_s)
    variant = lambda v: v.name.split("+")[1]  # noqa: E731
    assert not {variant(v) for v in test_v} & {variant(v) for v in train_v + val_v}
    assert len(set(spk.tolist())) == 8  # several sentences per speaker
    assert speech.split_plan("test", 32, seed=0)[0] == test_s  # deterministic


def test_cache_is_keyed_by_content_and_reused(tmp_path: Path) -> None:
    a = speech.load_or_synthesize("val", 4, 8000, 0, tmp_path, progress=False)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = speech.load_or_synthesize("val", 4, 8000, 0, tmp_path, progress=False)
    assert files[0].stat().st_mtime_ns == mtime and np.array_equal(a["audio"], b["audio"])
    speech.load_or_synthesize("val", 4, 16000, 0, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # another rate, another key
    assert speech.cache_path("val", 4, 8000, 0, tmp_path) != speech.cache_path("val", 4, 8000, 1, tmp_path)
    assert len(a["offsets"]) == 5 and a["offsets"][-1] == len(a["audio"])


def test_mix_pair_min_mode_levels_and_crop() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5000), 3 * rng.standard_normal(3000)
    out = mix_pair(a, b, snr_db=5.0, level_db=-25.0, length=None, rng=None)
    s, m = out["sources"].double().numpy(), out["mixture"].double().numpy()
    assert s.shape == (2, 3000) and np.allclose(m, s.sum(0), atol=1e-6)  # min mode: the shorter length
    ratio = 10 * np.log10((s[0] ** 2).mean() / (s[1] ** 2).mean())
    assert ratio == pytest.approx(5.0, abs=1e-3)
    assert 10 * np.log10((m**2).mean()) == pytest.approx(-25.0, abs=1e-3)
    padded = mix_pair(a[:1000], b[:900], 0.0, -25.0, length=1200, rng=rng)
    assert padded["mixture"].shape == (1200,) and torch.all(padded["mixture"][900:] == 0)


def test_embedded_datamodule_batches(tmp_path: Path) -> None:
    dm = SeparationDataModule(samples_per_epoch=4, train_utterances=8, val_mixtures=2, test_mixtures=2,
                              batch_size=2, segment_seconds=0.5, cache_dir=str(tmp_path), progress=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["mixture"].shape == (2, 4000) and batch["sources"].shape == (2, 2, 4000)
    assert torch.allclose(batch["sources"].sum(1), batch["mixture"], atol=1e-5)
    again = next(iter(loader))  # a new epoch draws new mixtures
    assert not torch.equal(again["mixture"], batch["mixture"])
    assert torch.equal(dm.train_set[(0, 1)]["mixture"], dm.train_set[(0, 1)]["mixture"])  # pure function
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert test["mixture"].shape[0] == 1 and test["mixture"].shape[1] > 4000  # whole mixtures
    assert dm.preprocess.sample_rate == 8000 and dm.preprocess.num_speakers == 2


def test_datamodule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        SeparationDataModule(sample_rate=11025)
    with pytest.raises(ValueError, match="root"):
        SeparationDataModule(dataset="librimix")
    with pytest.raises(ValueError, match="snr_range"):
        SeparationDataModule(snr_range=(5.0, -5.0))
    with pytest.raises(ValueError, match="dataset"):
        SeparationDataModule(dataset="timit")


def _write(path: Path, data: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype="FLOAT")


def make_librimix(root: Path, rate: int = 8000, split: str = "dev", kind: str = "mix_clean") -> dict[str, np.ndarray]:
    """A two-mixture Libri2Mix tree; the CSV holds absolute paths of another machine."""
    rng = np.random.default_rng(1)
    base = root / f"wav{rate // 1000}k" / "min"
    foreign = f"/home/someone/LibriMix/Libri2Mix/wav{rate // 1000}k/min/{split}"
    rows, truth = [], {}
    for i, n in enumerate((1200, 900)):
        mid = f"{100 + i}-2000-0000_{200 + i}-3000-0001"
        s1, s2 = 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n)
        noise = 0.01 * rng.standard_normal(n)
        mix = s1 + s2 + (noise if kind == "mix_both" else 0)
        for folder, data in ((kind, mix), ("s1", s1), ("s2", s2), ("noise", noise)):
            _write(base / split / folder / f"{mid}.wav", data, rate)
        row = {"mixture_ID": mid, "mixture_path": f"{foreign}/{kind}/{mid}.wav",
               "source_1_path": f"{foreign}/s1/{mid}.wav", "source_2_path": f"{foreign}/s2/{mid}.wav"}
        if kind == "mix_both":
            row["noise_path"] = f"{foreign}/noise/{mid}.wav"
        row["length"] = n
        rows.append(row)
        truth[mid] = np.stack([s1, s2])
    meta = base / "metadata" / f"mixture_{split}_{kind}.csv"
    meta.parent.mkdir(parents=True, exist_ok=True)
    with open(meta, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return truth


@pytest.mark.parametrize("kind", ["mix_clean", "mix_both"])
def test_librimix_reader_reroots_csv_paths(tmp_path: Path, kind: str) -> None:
    truth = make_librimix(tmp_path / "Libri2Mix", kind=kind)
    records = read_librimix(tmp_path / "Libri2Mix", "dev", 8000, "min", kind)
    assert [r.name for r in records] == list(truth)
    for r in records:
        assert r.mixture.startswith(str(tmp_path)) and f"/dev/{kind}/" in r.mixture
        mix, src = load_record(r, 8000)
        np.testing.assert_allclose(src, truth[r.name], atol=1e-6)
        assert r.length == src.shape[1] == len(mix)
    with pytest.raises(ValueError, match="root"):
        read_librimix(tmp_path / "Libri2Mix", "test", 8000, "min", kind)  # no metadata for that split
    with pytest.raises(ValueError, match="expected 16000 Hz"):
        load_record(records[0], 16000)  # a file at another rate than asked


def test_librimix_csv_cannot_point_outside_root(tmp_path: Path) -> None:
    make_librimix(tmp_path / "Libri2Mix")
    meta = tmp_path / "Libri2Mix" / "wav8k" / "min" / "metadata" / "mixture_dev_mix_clean.csv"
    text = meta.read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[2] = "/x/a/b/../../../../../etc/passwd"  # source_1_path escaping the dataset
    meta.write_text("\n".join([head, ",".join(first)]) + "\n")
    with pytest.raises(ValueError, match="root: LibriMix CSV path"):
        read_librimix(tmp_path / "Libri2Mix", "dev", 8000, "min", "mix_clean")


def _librimix_meta(root: Path) -> Path:
    return root / "wav8k" / "min" / "metadata" / "mixture_dev_mix_clean.csv"


def test_librimix_non_utf8_csv_names_the_path(tmp_path: Path) -> None:
    make_librimix(tmp_path)
    meta = _librimix_meta(tmp_path)
    meta.write_bytes(meta.read_bytes().replace(b"100-2000", b"\xff\xfe-2000"))
    with pytest.raises(ValueError, match=r"root: .*mixture_dev_mix_clean\.csv.* is not UTF-8"):
        read_librimix(tmp_path, "dev")


def test_librimix_row_with_missing_columns_names_row_and_column(tmp_path: Path) -> None:
    make_librimix(tmp_path)
    meta = _librimix_meta(tmp_path)
    lines = meta.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:2])  # the second row stops after mixture_path
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"row 2 column 'source_1_path' is empty or missing"):
        read_librimix(tmp_path, "dev")
    lines[2] = lines[1].rsplit(",", 1)[0] + ",inf"
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"row 2 column 'length': expected a whole number"):
        read_librimix(tmp_path, "dev")


def test_librimix_row_cannot_point_into_another_split(tmp_path: Path) -> None:
    """Re-rooting kept five path parts: a test CSV row could read training files (leakage)."""
    make_librimix(tmp_path, split="dev")
    make_librimix(tmp_path, split="train-100")
    meta = _librimix_meta(tmp_path)
    meta.write_text(meta.read_text().replace("/min/dev/s1/", "/min/train-100/s1/", 1))
    with pytest.raises(ValueError, match=r"root: LibriMix CSV path '.*/train-100/s1/.*' \(.*row 1 column "
                                         r"'source_1_path'\) does not end in dev/"):
        read_librimix(tmp_path, "dev")


def test_librimix_symlink_out_of_the_split_is_refused(tmp_path: Path) -> None:
    make_librimix(tmp_path / "data")
    outside = tmp_path / "secret.wav"
    _write(outside, np.zeros(100), 8000)
    name = next((tmp_path / "data" / "wav8k" / "min" / "dev" / "s2").glob("*.wav"))
    name.unlink()
    name.symlink_to(outside)
    with pytest.raises(ValueError, match=r"root: .*row \d column 'source_2_path': the file .* resolves to "
                                         r".*secret\.wav', outside"):
        read_librimix(tmp_path / "data", "dev")


def test_corrupt_wav_names_the_path(tmp_path: Path) -> None:
    make_librimix(tmp_path)
    record = read_librimix(tmp_path, "dev")[0]
    Path(record.sources[1]).write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(ValueError, match=r"record\.sources\[1\]: could not read '.*/s2/.*\.wav' as audio"):
        load_record(record, 8000)


def make_wsj0(root: Path, rate: int = 8000, split: str = "tt") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    folder = root / "2speakers" / f"wav{rate // 1000}k" / "min" / split
    truth = {}
    for name in ("011a0101_0.1_20ga0102_-0.1", "40na010x_1.2_051o020x_-1.2"):
        s = 0.1 * rng.standard_normal((2, 700))
        _write(folder / "mix" / f"{name}.wav", s.sum(0), rate)
        _write(folder / "s1" / f"{name}.wav", s[0], rate)
        _write(folder / "s2" / f"{name}.wav", s[1], rate)
        truth[name] = s
    return truth


def test_wsj0_2mix_symlink_out_of_the_split_is_refused(tmp_path: Path) -> None:
    make_wsj0(tmp_path / "data")
    outside = tmp_path / "other.wav"
    _write(outside, np.zeros(100), 8000)
    mix = next((tmp_path / "data" / "2speakers" / "wav8k" / "min" / "tt" / "mix").glob("*.wav"))
    mix.unlink()
    mix.symlink_to(outside)
    with pytest.raises(ValueError, match=r"root: mixture .* resolves to .*other\.wav', outside"):
        read_wsj0_2mix(tmp_path / "data", "tt")


def test_wsj0_2mix_reader_and_datamodule(tmp_path: Path) -> None:
    for split in ("tr", "cv", "tt"):
        truth = make_wsj0(tmp_path, split=split)
    for base in (tmp_path, tmp_path / "2speakers"):
        records = read_wsj0_2mix(base, "tt")
        assert sorted(r.name for r in records) == sorted(truth)
    mix, src = load_record(records[0], 8000)
    np.testing.assert_allclose(src, truth[records[0].name], atol=1e-6)
    dm = SeparationDataModule(dataset="wsj0-2mix", root=str(tmp_path), segment_seconds=0.05, batch_size=2,
                              samples_per_epoch=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mixture"].shape == (2, 400) and batch["sources"].shape == (2, 2, 400)
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))["mixture"].shape == (1, 700)
    with pytest.raises(ValueError, match="root"):
        read_wsj0_2mix(tmp_path, "tt", 16000)  # no wav16k folder
