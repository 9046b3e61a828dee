"""benchmarks/separation.py runs end to end in its --smoke mode and prints the table with finite numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_separation_benchmark_smoke(tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "benchmarks/separation.py", "--smoke", "--json", str(out_json)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MMOE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out_json.read_text())
    assert [row["method"] for row in rows][:2] == ["mixture (floor)", "oracle IRM (n_fft 64, hop 16)"]
    assert len(rows) == 4 and all(math.isfinite(row["si_snri"]) for row in rows)
    oracle = rows[1]
    assert oracle["si_snri"] > 5  # the ideal ratio mask separates well: the data and metric are sane
    moe, dense = rows[2], rows[3]
    assert moe["active_params"] < moe["params"] and dense["active_params"] == dense["params"]
    # same active FFN width: the counted MAC/s of the two random models agree within the router's share
    assert abs(moe["mac_per_s"] - dense["mac_per_s"]) / dense["mac_per_s"] < 0.15
    assert all(row["rtf"] > 0 for row in (moe, dense))
    assert "| method | SI-SNRi (dB)" in r.stdout


def test_blstm_peer_masks_add_up_and_it_trains(tmp_path: Path, monkeypatch) -> None:
    import torch

    from benchmarks.separation_blstm import BLSTMSeparator, train_blstm

    from mmoe.datamodules import SeparationDataModule

    torch.manual_seed(0)
    peer = BLSTMSeparator(n_fft=64, hop=16, hidden=8, layers=1)
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(torch.randn_like(p))
        x = torch.randn(2, 999)
        y = peer(x)
    assert y.shape == (2, 2, 999)
    assert float((y[:, 0] - y[:, 1]).pow(2).mean()) > 1e-3  # not an even split
    torch.testing.assert_close(y.sum(1), x, rtol=1e-3, atol=1e-4)  # softmax masks: estimates add up
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    dm = SeparationDataModule(segment_seconds=0.5, batch_size=2, samples_per_epoch=2, train_utterances=8,
                              val_mixtures=2, test_mixtures=2, progress=False)
    model, steps = train_blstm(1.0, dm=dm, n_fft=64, hop=16, hidden=8, layers=1)
    assert steps >= 2 and not model.training  # more than one pass over the 1-batch epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lstm_macs_match_a_hand_count() -> None:
    import torch

    from benchmarks.separation import lstm_macs

    lstm = torch.nn.LSTM(10, 6, num_layers=2, bidirectional=True, batch_first=True)
    # layer 1: 2 directions x 4 gates x 6 x (10 + 6); layer 2 takes the 12 concatenated outputs
    per_step = 2 * 4 * 6 * (10 + 6) + 2 * 4 * 6 * (12 + 6)
    assert lstm_macs(lstm, 3, 7) == per_step * 3 * 7
