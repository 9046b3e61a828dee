"""SI-SNRi and SDRi (best permutation) against independent implementations: a numpy SI-SNR with a
brute-force permutation search, fast_bss_eval's SDR and mir_eval's bss_eval_sources."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmoe.tasks.separation.metrics import SDRi, SISNRi


def si_snr_np(est: np.ndarray, ref: np.ndarray) -> float:
    est, ref = est - est.mean(), ref - ref.mean()
    proj = (est @ ref) / (ref @ ref) * ref
    return float(10 * np.log10((proj @ proj) / ((est - proj) @ (est - proj))))


def signals(seed: int, B: int = 3, S: int = 2, L: int = 2001) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((B, S, L))
    # estimates: a speaker swap for some mixtures, leakage and noise
    est = ref[:, ::-1].copy() * 0.8 + 0.3 * ref + 0.2 * rng.standard_normal((B, S, L))
    est[0] = ref[0] + 0.5 * rng.standard_normal((S, L))
    return torch.from_numpy(est), torch.from_numpy(ref), torch.from_numpy(ref.sum(1))


def test_si_snri_matches_numpy_with_brute_force_permutation() -> None:
    metric = SISNRi()
    expected = []
    for seed in (0, 1):
        est, ref, mix = signals(seed)
        metric.update(est.float(), ref.float(), mix.float())
        for b in range(est.shape[0]):
            e, r, m = est[b].numpy(), ref[b].numpy(), mix[b].numpy()
            best = max(np.mean([si_snr_np(e[p[s]], r[s]) for s in range(2)]) for p in itertools.permutations(range(2)))
            base = np.mean([si_snr_np(m, r[s]) for s in range(2)])
            expected.append(best - base)
    assert float(metric.compute()) == pytest.approx(float(np.mean(expected)), abs=1e-3)


def test_sdri_matches_fast_bss_eval_and_mir_eval() -> None:
    fast_bss_eval = pytest.importorskip("fast_bss_eval")
    mir_eval = pytest.importorskip("mir_eval")
    est, ref, mix = signals(3, B=2, L=4000)
    metric = SDRi()
    metric.update(est, ref, mix)
    ours = float(metric.compute())
    fast, mir = [], []
    for b in range(2):
        r, e, m = ref[b].numpy(), est[b].numpy(), np.stack([mix[b].numpy()] * 2)
        sdr_est = fast_bss_eval.sdr(r, e, filter_length=512)  # best permutation
        sdr_mix = fast_bss_eval.sdr(r, m, filter_length=512)
        fast.append(np.mean(sdr_est) - np.mean(sdr_mix))
        mir_est = mir_eval.separation.bss_eval_sources(r, e)[0]
        mir_mix = mir_eval.separation.bss_eval_sources(r, m, compute_permutation=False)[0]
        mir.append(np.mean(mir_est) - np.mean(mir_mix))
    assert ours == pytest.approx(float(np.mean(fast)), abs=0.05)
    assert ours == pytest.approx(float(np.mean(mir)), abs=0.3)  # mir_eval's filter and windowing differ slightly


def test_perfect_estimates_in_swapped_order_score_like_in_order() -> None:
    _, ref, mix = signals(5)
    a, b = SISNRi(), SISNRi()
    a.update(ref.float(), ref.float(), mix.float())
    b.update(ref.flip(1).float(), ref.float(), mix.float())
    assert float(a.compute()) == pytest.approx(float(b.compute()), abs=1e-4)
    assert float(a.compute()) > 50  # perfect separation


def test_metrics_reject_mismatched_shapes() -> None:
    est, ref, mix = signals(0)
    with pytest.raises(ValueError, match="preds/target"):
        SISNRi().update(est[:, :1], ref, mix)
    with pytest.raises(ValueError, match="mixture"):
        SDRi().update(est, ref, mix[:, :10])
