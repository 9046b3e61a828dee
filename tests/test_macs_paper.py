"""Paper MACS (``capacity_mode="macs_paper"``) against the loop-based reference in naive_moe.py.

The reference (:func:`naive_moe.paper_macs_keep`) is written from the rule in words in the
mmoe/capacity.py docstring and shares no code with mmoe: the live majority modality is visual,
capacity ``ceil(cf*k*T_v/E) + ceil(k*(T-T_v)/E)``, text pairs first by gate, then visual pairs by
token value (``2 - H(p)/log E``) x gate.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmoe import MoELayer
from mmoe.capacity import paper_macs_capacity, paper_macs_priority, token_value
from mmoe.kernels import reference
from mmoe.settings import MoESettings
from naive_moe import naive_forward, paper_macs_keep, random_pairs


def kept_by_mmoe(pair_token: torch.Tensor, pair_expert: torch.Tensor, gate: torch.Tensor, modality: torch.Tensor,
                 probs: torch.Tensor, E: int, M: int, k: int, cf: float) -> tuple[set[int], int]:
    counts = torch.bincount(modality, minlength=M).tolist()
    capacity, visual = paper_macs_capacity(cf, k, counts, E)
    priority = paper_macs_priority(pair_token, gate, modality, probs, visual)
    keep = reference.dispatch_metadata(pair_expert, priority, E, capacity).keep
    return set(keep.nonzero().flatten().tolist()), capacity


def kept_by_reference(pair_token: torch.Tensor, pair_expert: torch.Tensor, gate: torch.Tensor,
                      modality: torch.Tensor, probs: torch.Tensor, E: int, k: int, cf: float) -> tuple[set[int], int]:
    pairs = list(zip(pair_token.tolist(), pair_expert.tolist(), gate.tolist()))
    return paper_macs_keep(pairs, modality.tolist(), probs.tolist(), E, k, cf)


# ------------------------------------------------------------------ a hand case
# E = 3, top-1, every token routed to expert 0 (its gate is its largest probability).
# Six visual tokens (modality 1, the majority) and two text tokens (modality 0). Token value
# v = 2 - H(p)/log 3, pair value u = v * gate (worked by hand):
#   D [0.90, 0.05, 0.05]  H/log3 0.359  v 1.641  u 1.477
#   A [0.60, 0.40, 0.00]  H/log3 0.613  v 1.387  u 0.832   (sharp: one alternative)
#   C [0.62, 0.19, 0.19]  H/log3 0.844  v 1.156  u 0.717
#   B [0.60, 0.20, 0.20]  H/log3 0.865  v 1.135  u 0.681   (same gate as A, flatter)
#   F [0.50, 0.25, 0.25]  H/log3 0.946  v 1.054  u 0.527
#   G [0.45, 0.35, 0.20]  H/log3 0.955  v 1.045  u 0.470
#   X [0.40, 0.30, 0.30] and Y [0.50, 0.30, 0.20]: text, kept first whatever their value
# T = 8, T_v = 6, k = 1: C = ceil(cf * 6 / 3) + ceil(2 / 3) = ceil(2 cf) + 1.
#   cf 1.0 -> C 3: X, Y, D;  cf 1.5 -> C 4: + A;  cf 2.0 -> C 5: + C;  cf 2.5 -> C 6: + B.
# A before C although C's gate is larger: the entropy-weighted value, not the gate, orders visual
# pairs. Static capacity (C = ceil(cf * 8 / 3), by gate) drops text token X (lowest gate) at these cf.
HAND = {"D": ([0.90, 0.05, 0.05], 1), "A": ([0.60, 0.40, 0.0], 1), "C": ([0.62, 0.19, 0.19], 1),
        "B": ([0.60, 0.20, 0.20], 1), "F": ([0.50, 0.25, 0.25], 1), "G": ([0.45, 0.35, 0.20], 1),
        "X": ([0.40, 0.30, 0.30], 0), "Y": ([0.50, 0.30, 0.20], 0)}
HAND_U = {"D": 1.477, "A": 0.832, "C": 0.717, "B": 0.681, "F": 0.527, "G": 0.470}
HAND_KEPT = {1.0: {"X", "Y", "D"}, 1.5: {"X", "Y", "D", "A"}, 2.0: {"X", "Y", "D", "A", "C"},
             2.5: {"X", "Y", "D", "A", "C", "B"}}


def hand_case() -> tuple[torch.Tensor, ...]:
    probs = torch.tensor([p for p, _ in HAND.values()])
    modality = torch.tensor([m for _, m in HAND.values()])
    pair_token = torch.arange(len(HAND))
    return pair_token, torch.zeros(len(HAND), dtype=torch.long), probs[:, 0], modality, probs


def test_hand_case_values_are_the_worked_ones() -> None:
    _, _, gate, _, probs = hand_case()
    u = token_value(probs) * gate
    names = list(HAND)
    for name, want in HAND_U.items():
        assert abs(float(u[names.index(name)]) - want) < 1e-3, name


@pytest.mark.parametrize("cf", sorted(HAND_KEPT))
def test_hand_case_kept_set_is_exact(cf: float) -> None:
    pair_token, pair_expert, gate, modality, probs = hand_case()
    names = list(HAND)
    got, capacity = kept_by_mmoe(pair_token, pair_expert, gate, modality, probs, 3, 2, 1, cf)
    assert capacity == math.ceil(2 * cf) + 1
    assert {names[i] for i in got} == HAND_KEPT[cf]
    ref, ref_capacity = kept_by_reference(pair_token, pair_expert, gate, modality, probs, 3, 1, cf)
    assert (ref, ref_capacity) == (got, capacity)


@pytest.mark.parametrize("cf", [1.5, 2.0])
def test_hand_case_through_the_layer(cf: float) -> None:
    """The same tokens through MoELayer(capacity_mode="macs_paper"): logits log p with an identity
    router give the softmax p; the static layer at the same cf drops text token X."""
    _, _, _, modality, probs = hand_case()
    x = probs.clamp_min(1e-6).log()
    names = list(HAND)
    kept = {}
    for mode in ("macs_paper", "static"):
        layer = MoELayer(3, 4, 3, 1, capacity_factor=cf, num_modalities=2, capacity_mode=mode, backend="torch").eval()
        with torch.no_grad():
            layer.router.weight.copy_(torch.eye(3))
            layer(x, modality)
        pair_token, kept_expert, _ = layer.last_assignment
        kept[mode] = {names[int(t)] for t, e in zip(pair_token, kept_expert) if int(e) == 0}
    assert kept["macs_paper"] == HAND_KEPT[cf]
    assert "X" not in kept["static"] and len(kept["static"]) == math.ceil(cf * 8 / 3)


def test_hand_case_drops_are_counted_per_modality() -> None:
    _, _, _, modality, probs = hand_case()
    layer = MoELayer(3, 4, 3, 1, capacity_factor=1.0, num_modalities=2, capacity_mode="macs_paper",
                     backend="torch").eval()
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(3))
        layer(probs.clamp_min(1e-6).log(), modality)
    assert layer.stats.capacity == 3
    assert layer.stats.dropped_per_modality.tolist() == [0, 5]  # text none, visual all but D


# ------------------------------------------------------------------ random cases, odd sizes
CASES = [  # T, E, k, M, cf
    (0, 4, 2, 2, 0.5),      # zero tokens
    (1, 4, 2, 2, 0.5),      # one token
    (1, 1, 1, 3, 0.3),      # one expert
    (2, 4, 1, 2, 0.5),      # a tie between the modality counts: the lowest id is visual
    (3, 9, 1, 2, 0.5),      # experts that get nothing
    (5, 16, 2, 3, 1.0),
    (12, 1, 1, 2, 0.4),     # one expert, two modalities
    (17, 5, 2, 3, 0.75),
    (41, 6, 3, 2, 0.5),
    (64, 8, 2, 4, 0.25),
    (90, 8, 2, 2, 0.6),     # the VLM shape: 9 visual tokens to 1 text token
]


@pytest.mark.parametrize("T,E,k,M,cf", CASES)
@pytest.mark.parametrize("pruned", [False, True])
def test_kept_pairs_match_the_reference(T: int, E: int, k: int, M: int, cf: float, pruned: bool) -> None:
    gen = torch.Generator().manual_seed(1000 * T + 10 * E + k + pruned)
    for trial in range(5):
        skew = 0.9 if T == 90 else 0.3 * trial / 4
        pair_token, pair_expert, gate, modality, probs = random_pairs(gen, T, E, k, M, pruned, skew)
        got, capacity = kept_by_mmoe(pair_token, pair_expert, gate, modality, probs, E, M, k, cf)
        assert (got, capacity) == kept_by_reference(pair_token, pair_expert, gate, modality, probs, E, k, cf)
        for e in range(E):  # no expert over capacity; an expert under capacity drops nothing
            routed = int((pair_expert == e).sum())
            assert sum(int(pair_expert[i]) == e for i in got) == min(routed, capacity)


def test_visual_modality_is_the_live_majority() -> None:
    assert paper_macs_capacity(0.5, 2, [10, 80], 8) == (math.ceil(0.5 * 2 * 80 / 8) + math.ceil(2 * 10 / 8), 1)
    assert paper_macs_capacity(0.5, 2, [80, 10, 0], 8)[1] == 0
    assert paper_macs_capacity(0.5, 2, [5, 5], 8)[1] == 0  # tie: lowest id
    assert paper_macs_capacity(0.5, 2, [0, 0], 8) == (0, 0)
    # one modality only: the static capacity
    assert paper_macs_capacity(0.7, 2, [33], 5)[0] == math.ceil(0.7 * 2 * 33 / 5)
    with pytest.raises(ValueError, match="tokens_per_modality"):
        paper_macs_capacity(0.5, 2, [], 8)


@pytest.mark.parametrize("T,E,k,M,cf", [(0, 4, 2, 2, 0.5), (1, 4, 2, 2, 0.5), (3, 9, 1, 2, 0.5),
                                        (23, 5, 2, 3, 0.5), (45, 6, 2, 2, 0.4), (31, 4, 1, 2, 0.75)])
def test_layer_matches_the_reference(T: int, E: int, k: int, M: int, cf: float) -> None:
    torch.manual_seed(7 * T + E)
    layer = MoELayer(12, 10, E, k, capacity_factor=cf, num_modalities=M, capacity_mode="macs_paper",
                     backend="torch").eval()
    with torch.no_grad():
        layer.router.weight.mul_(1 + torch.rand(E, 1) * 4)
    x = torch.randn(T, 12)
    modality = torch.where(torch.rand(T) < 0.7, 1, torch.randint(0, M, (T,)))
    with torch.no_grad():
        y = layer(x, modality)
        y_ref, dropped = naive_forward(layer, x, modality)
    scale = float(y_ref.abs().max().clamp_min(1.0)) if y_ref.numel() else 1.0
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * scale)
    assert int(layer.stats.dropped_per_modality.sum()) == dropped
    counts = torch.bincount(modality, minlength=M).tolist()
    assert layer.stats.capacity == paper_macs_capacity(cf, k, counts, E)[0]
    if T >= 23:  # capacity binds: the comparison covered drops
        assert dropped > 0


def test_without_modality_ids_it_is_static() -> None:
    torch.manual_seed(3)
    x = torch.randn(40, 12)
    out = {}
    for mode in ("macs_paper", "static"):
        torch.manual_seed(4)
        layer = MoELayer(12, 10, 4, 2, capacity_factor=0.5, capacity_mode=mode, backend="torch").eval()
        with torch.no_grad():
            out[mode] = (layer(x), layer.stats.capacity)
    torch.testing.assert_close(out["macs_paper"][0], out["static"][0])
    assert out["macs_paper"][1] == out["static"][1]


def test_settings_accept_the_mode_and_refuse_it_where_it_cannot_apply() -> None:
    s = MoESettings(capacity_mode="macs_paper", capacity_factor=0.5)
    assert s.block_fields()["capacity_mode"] == "macs_paper" and s.capacity == 0.5
    with pytest.raises(ValueError, match="moe.capacity_mode"):
        MoESettings(router="expert_choice", capacity_mode="macs_paper")
    with pytest.raises(ValueError, match="capacity_mode"):
        MoELayer(8, 8, 4, 2, capacity_mode="macs_papers")


# ------------------------------------------------------------------ expert parallel, 2 gloo processes
def test_expert_parallel_matches_one_process(tmp_path: Path) -> None:
    """Output, aux loss, stats (capacity and per-modality drops included) and gradients of the
    2-rank sharded layer equal the one-process layer's (tests/test_parallel.py's harness)."""
    from test_parallel import spawn

    cases = {"softmax-macs_paper": ("softmax", 0.5, "macs_paper", 2, 0, "torch"),
             "softmax-macs_paper-3mod": ("softmax", 0.75, "macs_paper", 3, 0, "torch")}
    got = spawn(2, cases, tmp_path)
    assert {k.split("/")[0] for k in got} == set(cases)
    for key, errors in got.items():
        assert not errors, f"{key}:\n" + "\n".join(errors)


# ------------------------------------------------------------------ the testbed (benchmarks/vlm_macs.py)
def test_vlm_testbed_smoke(tmp_path: Path) -> None:
    """The VLM testbed runs end to end (tiny data, 10 steps); its rows obey the policies' rules:
    every capacity row's busiest expert is within its capacity; paper MACS drops no question token;
    the image is >= 8x the question."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "vlm.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "vlm_macs.py"), "--smoke", "--threads", "1",
                    "--out", str(out)], check=True, cwd=root, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    info, rows = result["info"], {r["setting"]: r for r in result["rows"]}
    assert info["image_tokens"] >= 8 * info["text_tokens_mean"]
    assert set(rows) == {"dropless", "static 0.5", "macs_paper 0.5", "macs 0.5", "macs_output 0.5"}
    tokens = 32 * (info["image_tokens"] + info["text_tokens_mean"])  # one eval batch (mean text length)
    for name, r in rows.items():
        if name != "dropless":
            assert max(r["busiest_per_layer"]) <= max(rows["dropless"]["busiest_per_layer"])
    assert max(rows["static 0.5"]["busiest_per_layer"]) <= math.ceil(0.5 * 2 * tokens / 8) + 2
    assert rows["macs_paper 0.5"]["dropped_text"] == 0.0 and rows["macs_paper 0.5"]["dropped_image"] > 0.3
    assert rows["static 0.5"]["dropped_text"] > 0.0
