"""Separation model and predict: shapes on odd lengths, MoE vs dense active compute, chunked
separation with a consistent speaker order, the predict contract and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmoe.settings import MoESettings
from mmoe.moe_layer import MoELayer
from mmoe.tasks.separation import SeparationTask, TFMoESeparator
from mmoe.tasks.separation.model import band_widths

TINY = dict(n_fft=64, hop=16, dim=16, depth=1, num_heads=2, hidden_dim=16,
            moe=MoESettings(num_experts=4, top_k=2), mask_hidden=16)


def test_band_layout_covers_every_bin_once() -> None:
    for rate, n_fft in ((8000, 256), (16000, 512), (8000, 64)):
        widths = band_widths(n_fft // 2 + 1, rate, n_fft)
        assert sum(widths) == n_fft // 2 + 1 and min(widths) >= 1
        assert widths[0] <= widths[-1]  # finer bands at low frequencies


VARIANTS = [{}, {"mixer": "frame_lstm", "frame_hidden": 8, "mask_head": "frame"},
            {"mixer": "lstm", "mask": "softmax"}]


@pytest.mark.parametrize("variant", VARIANTS, ids=["attention", "frame_lstm", "lstm_softmax"])
@pytest.mark.parametrize("length", [1, 97, 1003])
def test_forward_shapes_on_odd_lengths_and_level_equivariance(length: int, variant: dict) -> None:
    torch.manual_seed(0)
    model = TFMoESeparator(**TINY, **variant).eval()
    x = torch.randn(2, length)
    y = model(x)
    assert y.shape == (2, 2, length) and torch.isfinite(y).all()
    # the model is level-independent: scaling the input scales the output
    torch.testing.assert_close(model(3 * x), 3 * y, rtol=1e-3, atol=1e-4)


def test_untrained_masks_split_the_mixture_evenly() -> None:
    model = TFMoESeparator(**TINY).eval()
    x = torch.randn(1, 800)
    y = model(x)
    # mask biases start at 1/S; weights are small: the sum of the estimates is near the mixture
    assert float((y.sum(1) - x).pow(2).mean() / x.pow(2).mean()) < 0.5


def test_softmax_masks_add_up_to_the_mixture() -> None:
    """Real masks summing to one over the speakers: the estimates add up to the mixture for any weights."""
    torch.manual_seed(0)
    model = TFMoESeparator(**TINY, mixer="frame_lstm", frame_hidden=8, mask_head="frame", mask="softmax").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # far from the initial even split
        x = torch.randn(2, 1003)
        y = model(x)
    assert float((y[:, 0] - y[:, 1]).pow(2).mean() / x.pow(2).mean()) > 0.01  # not an even split
    torch.testing.assert_close(y.sum(1), x, rtol=1e-3, atol=1e-4)


def test_frame_mixer_needs_the_band_grid() -> None:
    model = TFMoESeparator(**TINY, mixer="frame_lstm", frame_hidden=8)
    mixer = model.backbone.blocks[0].mixer
    with pytest.raises(ValueError, match="grid"):
        mixer(torch.randn(1, 12, TINY["dim"]), (4, 3))


@pytest.mark.parametrize("bad", [{"mixer": "conv"}, {"mask_head": "pixel"}, {"mask": "ratio"}, {"frame_hidden": 0}])
def test_bad_model_choices_name_the_argument(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TFMoESeparator(**TINY, **bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        SeparationTask(**{k: v for k, v in TINY.items()}, **bad)


def test_moe_and_dense_have_the_same_active_ffn_width() -> None:
    moe = TFMoESeparator(**TINY)
    dense = TFMoESeparator(**{**TINY, "moe": TINY["moe"].replace(dense=True)})
    layers = moe.moe_layers()
    assert len(layers) == 2 * TINY["depth"] and all(isinstance(m, MoELayer) for m in layers)
    assert not dense.moe_layers()
    ffn = dense.backbone.blocks[0].ffn
    assert ffn.mlp.w_out.shape[-2] == TINY["moe"].top_k * TINY["hidden_dim"]


def test_chunked_separation_keeps_the_speaker_order() -> None:
    """An 'oracle' separator returning the sources in a random order per chunk: the chunked output
    must still follow one order over the whole signal."""
    rng = np.random.default_rng(0)
    L = 5000
    src = torch.from_numpy(rng.standard_normal((1, 2, L)).astype(np.float32))
    model = TFMoESeparator(**TINY)
    state = {"calls": 0}

    def oracle(mix: torch.Tensor) -> torch.Tensor:
        n = mix.shape[-1]
        start = state.setdefault("pos", 0)
        out = src[..., start:start + n]
        state["calls"] += 1
        return out.flip(1) if state["calls"] % 2 else out

    starts = []

    def fake_forward(mix: torch.Tensor) -> torch.Tensor:
        # find where this chunk sits in the signal (exact match of the mixture)
        full = src.sum(1)[0]
        n = mix.shape[-1]
        for s in range(0, L - n + 1):
            if torch.equal(full[s:s + n], mix[0]):
                state["pos"] = s
                starts.append(s)
                break
        return oracle(mix)

    model.forward = fake_forward  # type: ignore[method-assign]
    out = model.separate_long(src.sum(1), chunk=1200, overlap=300)
    assert len(starts) >= 4
    perm_ok = [torch.allclose(out, src, atol=1e-5), torch.allclose(out, src.flip(1), atol=1e-5)]
    assert any(perm_ok)


@pytest.fixture(scope="module")
def task() -> SeparationTask:
    torch.manual_seed(0)
    return SeparationTask(preprocess={"sample_rate": 8000, "chunk_seconds": 0.5, "overlap_seconds": 0.1}, **TINY)


def test_predict_contract(task: SeparationTask, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(3001)).astype(np.float32)
    out = task.predict(x, sample_rate=8000)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3001) and out.dtype == np.float32
    # another rate in, the same rate and length out
    out16 = task.predict(np.repeat(x, 2).astype(np.float64), sample_rate=16000)
    assert out16.shape == (2, 6002) and out16.dtype == np.float64
    # a batch, a tensor, integer PCM, a path
    batch = task.predict(np.stack([x, x]), sample_rate=8000)
    assert batch.shape == (2, 2, 3001)
    np.testing.assert_allclose(batch[0], out, atol=1e-5)
    tensor = task.predict(torch.from_numpy(x).double(), sample_rate=8000)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64 and tensor.shape == (2, 3001)
    pcm = task.predict((x * 32767).astype(np.int16), sample_rate=8000)
    assert pcm.dtype == np.float32 and pcm.shape == (2, 3001)
    path = tmp_path / "mix.wav"
    sf.write(str(path), x, 8000)
    np.testing.assert_allclose(task.predict(str(path)), out, atol=1e-3)
    # long inputs (chunked) keep length; very short ones work
    assert task.predict(np.tile(x, 3), sample_rate=8000).shape == (2, 9003)
    assert task.predict(x[:5], sample_rate=8000).shape == (2, 5)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 3, 100), np.float32),), "audio: expected mono"),
    ((np.zeros(100, np.float32),), "sample_rate: required"),
    ((np.zeros(0, np.float32), 8000), "audio: expected at least one sample"),
    ((np.array([0.0, np.nan], np.float32), 8000), "audio: contains NaN"),
    ((np.zeros(100, np.float32), -5), "sample_rate: expected a positive int"),
    ((np.zeros(100, np.float32), 8000.5), "sample_rate: expected a positive int"),
    (("/no/such/file.wav",), "audio: expected an existing audio file"),
])
def test_predict_errors_name_the_argument(task: SeparationTask, args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        task.predict(*args)


def test_predict_type_errors(task: SeparationTask, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="audio"):
        task.predict([0.0, 0.1], sample_rate=8000)
    with pytest.raises(TypeError, match="audio"):
        task.predict(np.array(["a", "b"]), sample_rate=8000)
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.zeros((100, 2), np.float32), 8000)
    with pytest.raises(ValueError, match="mono"):
        task.predict(str(stereo))
    mono = tmp_path / "mono.wav"
    sf.write(str(mono), np.zeros(100, np.float32), 8000)
    with pytest.raises(ValueError, match="sample_rate: the file"):
        task.predict(str(mono), sample_rate=16000)


def test_task_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hop"):
        SeparationTask(n_fft=64, hop=128)
    with pytest.raises(ValueError, match="preprocess.overlap_seconds"):
        SeparationTask(preprocess={"chunk_seconds": 1.0, "overlap_seconds": 0.6})


def test_stream_emits_every_sample_with_its_latency_and_bounded_state(task: SeparationTask) -> None:
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal(5000)).astype(np.float32)
    s = task.stream(8000, block_ms=32, lookahead_ms=16, context_seconds=0.25)  # 256, 128, 2000 samples
    assert s.latency_seconds == pytest.approx(0.048)
    got, pushed = [], 0
    for size in rng.integers(1, 400, size=40):
        chunk = x[pushed: pushed + size]
        if not chunk.size:
            break
        out = s.push(chunk)
        pushed += chunk.size
        got.append(out)
        emitted = sum(o.shape[-1] for o in got)
        assert emitted == max(0, (pushed - 128) // 256) * 256  # a block leaves once its lookahead is in
        assert s._x.numel() <= 2000 + 256 + 128 + 400  # past context, one block, lookahead, one chunk
    got.append(s.push(x[pushed:]))
    got.append(s.flush())
    out = np.concatenate(got, -1)
    assert out.shape == (2, 5000) and out.dtype == np.float32 and np.isfinite(out).all()


def test_stream_with_whole_context_equals_the_model_on_the_whole_input(task: SeparationTask) -> None:
    """Context and lookahead longer than the input: every block comes from one window, the whole
    input, so the stream's output is the model's, in the same speaker order."""
    x = (0.1 * np.random.default_rng(4).standard_normal(3000)).astype(np.float32)
    s = task.stream(8000, block_ms=20, lookahead_ms=1000, context_seconds=1.0)
    out = np.concatenate([s.push(x[:1234]), s.push(x[1234:]), s.flush()], -1)
    with torch.no_grad():
        want = task.eval().model(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_stream_refuses_bad_settings_and_chunks(task: SeparationTask) -> None:
    with pytest.raises(ValueError, match="sample_rate: a stream runs at the model's rate, 8000 Hz, got 16000"):
        task.stream(16000)
    with pytest.raises(ValueError, match="block_ms: expected a finite number >= 1.0"):
        task.stream(8000, block_ms=0)
    s = task.stream(8000)
    with pytest.raises(ValueError, match=r"chunk: .*\[samples, channels\]"):
        s.push(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="chunk: contains NaN"):
        s.push(np.full(10, np.nan, np.float32))
    assert s.push((np.ones(10) * 1000).astype(np.int16)).shape == (2, 0)  # integer PCM is read as such
