"""Tracking metrics against an independent per-frame implementation written with plain Python
loops (IoU from interval overlaps, curves by counting), on random boxes with absent frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmoe.tasks.tracking.metrics import NormalizedPrecision, PrecisionAt, RGBDFScore, SuccessAUC


def ref_iou(a, b) -> float:
    if not (all(math.isfinite(v) for v in (*a, *b)) and a[2] > 0 and a[3] > 0 and b[2] > 0 and b[3] > 0):
        return 0.0
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def ref_err(a, b, norm=False) -> float:
    if not (all(math.isfinite(v) for v in a) and a[2] > 0 and a[3] > 0):
        return math.inf
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    if norm:
        dx, dy = dx / b[2], dy / b[3]
    return math.hypot(dx, dy)


def gt_visible(g, p) -> bool:
    return bool(p) and all(math.isfinite(v) for v in g) and g[2] > 0 and g[3] > 0


def reference(seqs):
    succ, prec, nprec = [], [], []
    for pred, gt, present, _ in seqs:
        frames = [i for i in range(1, len(gt)) if gt_visible(gt[i], present[i])]
        if not frames:
            continue
        ious = [ref_iou(pred[i], gt[i]) for i in frames]
        errs = [ref_err(pred[i], gt[i]) for i in frames]
        nerrs = [ref_err(pred[i], gt[i], True) for i in frames]
        succ.append(np.mean([np.mean([u > t for u in ious]) for t in np.linspace(0, 1, 21)]))
        prec.append(np.mean([e <= 20 for e in errs]))
        nprec.append(np.mean([np.mean([e <= t for e in nerrs]) for t in np.linspace(0, 0.5, 51)]))
    return np.mean(succ), np.mean(prec), np.mean(nprec)


def reference_vot(seqs):
    confs = sorted({c for _, _, _, conf in seqs for c in conf[1:]})
    best = (-1.0, None, None, None)
    for t in confs:
        prs, res = [], []
        for pred, gt, present, conf in seqs:
            rep = [i for i in range(1, len(gt)) if conf[i] >= t]
            vis = [i for i in range(1, len(gt)) if gt_visible(gt[i], present[i])]
            iou = {i: (ref_iou(pred[i], gt[i]) if gt_visible(gt[i], present[i]) else 0.0) for i in range(1, len(gt))}
            prs.append(sum(iou[i] for i in rep) / len(rep) if rep else 1.0)
            if vis:
                res.append(sum(iou[i] for i in rep if i in vis) / len(vis))
        pr, re = float(np.mean(prs)), float(np.mean(res))
        f = 2 * pr * re / (pr + re) if pr + re > 0 else 0.0
        if f > best[0]:
            best = (f, pr, re, t)
    return best


def random_sequences(rng, n_seq=5):
    seqs = []
    for s in range(n_seq):
        n = int(rng.integers(2, 40))
        gt = np.column_stack([rng.uniform(0, 200, n), rng.uniform(0, 200, n),
                              rng.uniform(5, 60, n), rng.uniform(5, 60, n)])
        pred = gt + rng.normal(0, 12, (n, 4))  # some overlap, some misses, some w/h <= 0
        pred[rng.random(n) < 0.1] = np.nan  # lost frames
        present = rng.random(n) > 0.2
        gt[rng.random(n) < 0.05, 2] = 0.0  # a zero-width ground truth: absent too
        if s == 0:
            present[1:] = False  # a sequence with no visible target after frame 0
        conf = rng.random(n).round(2)  # ties on purpose
        seqs.append((pred, gt, present, conf))
    return seqs


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    seqs = random_sequences(rng)
    metrics = SuccessAUC(), PrecisionAt(20), NormalizedPrecision()
    for pred, gt, present, _ in seqs:
        for m in metrics:
            m.update(torch.tensor(pred), torch.tensor(gt), torch.tensor(present))
    ref = reference(seqs)
    for m, r in zip(metrics, ref):
        assert float(m.compute()) == pytest.approx(r, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_rgbd_f_score_matches_reference(seed):
    rng = np.random.default_rng(100 + seed)
    seqs = random_sequences(rng)
    metric = RGBDFScore()
    for pred, gt, present, conf in seqs:
        metric.update(torch.tensor(pred), torch.tensor(gt), torch.tensor(conf), torch.tensor(present))
    out = metric.compute()
    f, pr, re, t = reference_vot(seqs)
    assert float(out["f_score"]) == pytest.approx(f, abs=1e-12)
    assert float(out["precision"]) == pytest.approx(pr, abs=1e-12)
    assert float(out["recall"]) == pytest.approx(re, abs=1e-12)


def test_perfect_and_hopeless_trackers():
    gt = torch.tensor([[10.0, 10, 20, 30]] * 6)
    for m, perfect, hopeless in ((SuccessAUC(), 20 / 21, 0.0), (PrecisionAt(), 1.0, 0.0),
                                 (NormalizedPrecision(), 1.0, 0.0)):
        m.update(gt.clone(), gt)
        assert float(m.compute()) == pytest.approx(perfect)  # IoU 1 is not > threshold 1
        m.reset()
        far = gt.clone()
        far[:, :2] += 500
        m.update(far, gt)
        assert float(m.compute()) == pytest.approx(hopeless)


def test_first_frame_is_not_scored():
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    pred = gt.clone()
    pred[0] += 1000  # a wrong first box changes nothing: frame 0 is the initialisation
    m = PrecisionAt()
    m.update(pred, gt)
    assert float(m.compute()) == 1.0


@pytest.mark.parametrize("bad, match", [
    (lambda g: (g[:, :3], g), "pred: expected a \\[N, 4\\]"),
    (lambda g: (g[:3], g), "pred: expected the shape of target"),
    (lambda g: (g[:1], g[:1]), "at least 2 frames"),
    (lambda g: ([[0, 0, 1, 1]], g), "pred: expected a \\[N, 4\\]"),
])
def test_bad_inputs_name_the_argument(bad, match):
    gt = torch.rand(5, 4) + 1
    with pytest.raises(ValueError, match=match):
        SuccessAUC().update(*bad(gt))


def test_rgbd_rejects_nan_confidence():
    gt = torch.rand(5, 4) + 1
    with pytest.raises(ValueError, match="confidence"):
        RGBDFScore().update(gt, gt, torch.tensor([0.5, float("nan"), 0.1, 0.2, 0.3]))


@pytest.mark.parametrize("seed", [0, 1])
def test_box_iou_matches_torchvision_diagonal(seed):
    from torchvision.ops import box_iou as pairwise

    from mmoe.tasks.tracking.metrics import box_iou

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(37, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(37, 2, generator=g, dtype=torch.float64) * 30 + 0.5
    a = torch.cat([xy, wh], 1)
    b = torch.cat([xy + torch.randn(37, 2, generator=g, dtype=torch.float64) * 8, wh * 1.3], 1)
    b[3] = a[3]  # identical: 1
    b[5, :2] = a[5, :2] + 500  # disjoint: 0
    xyxy = lambda boxes: torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)  # noqa: E731
    expected = pairwise(xyxy(a), xyxy(b)).diagonal()
    torch.testing.assert_close(box_iou(a, b), expected)
    assert box_iou(a, b)[3] == pytest.approx(1.0) and box_iou(a, b)[5] == 0
