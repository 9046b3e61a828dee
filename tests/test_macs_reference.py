"""MACS (modality-aware capacity scaling) against the loop-based reference in naive_moe.py.

The reference is written from the rule in words (mmoe/capacity.py docstring, design.md): token
value from the routing entropy, entropy-weighted load per (expert, modality), rank by pair value
inside the group, admit the smallest ``(rank + 1) / load``. It shares no code with mmoe, so a
change to the rule in mmoe.capacity (or in mmoe.parallel's use of it) shows up here.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmoe import MoELayer
from mmoe.capacity import macs_priority, token_value
from mmoe.kernels import reference
from naive_moe import macs_keep, macs_token_value, naive_forward, random_pairs


def kept_by_mmoe(pair_token: torch.Tensor, pair_expert: torch.Tensor, gate: torch.Tensor, modality: torch.Tensor,
                 probs: torch.Tensor, E: int, M: int, capacity: int) -> set[int]:
    priority = macs_priority(pair_token, pair_expert, gate, modality, probs, E, M)
    keep = reference.dispatch_metadata(pair_expert, priority, E, capacity).keep
    return set(keep.nonzero().flatten().tolist())


def kept_by_reference(pair_token: torch.Tensor, pair_expert: torch.Tensor, gate: torch.Tensor,
                      modality: torch.Tensor, probs: torch.Tensor, E: int, capacity: int) -> set[int]:
    pairs = list(zip(pair_token.tolist(), pair_expert.tolist(), gate.tolist()))
    return macs_keep(pairs, modality.tolist(), probs.tolist(), E, capacity)


# ------------------------------------------------------------------ a hand case
# E = 2, every pair at expert 0, capacity 3. A token's distribution is [q, 1 - q] and its gate q, so
# its value is v = 2 - H(q) / log 2: q = 1 -> v = 2; q = 0.95 -> 1.7136; q = 0.9 -> 1.5310;
# q = 0.6 -> 1.0290; q = 0.5 -> 1 (undecided).
#   modality 0: A (q 1), B (q 0.9), F (q 0.95): load 5.2446; ranks by u = v * q: A 2.0, F 1.628,
#               B 1.378 -> keys 1/5.2446 = 0.191, 0.381, 0.572
#   modality 1: C (q 0.5), D (q 0.6), E (q 0.5): load 3.029; ranks: D 0.617, C 0.5, E 0.5 (C first:
#               earlier) -> keys 0.330, 0.660, 0.990
# The three smallest keys: A, D, F. Static capacity (by gate) would keep A, F, B: modality 1 nothing.
# With the value inverted (undecided weigh most) the keys give B, C, D; ranked worst first, B, C, F.
HAND_Q = {"A": (1.0, 0), "B": (0.9, 0), "C": (0.5, 1), "D": (0.6, 1), "E": (0.5, 1), "F": (0.95, 0)}


def hand_case() -> tuple[torch.Tensor, ...]:
    names = list(HAND_Q)
    q = torch.tensor([HAND_Q[n][0] for n in names])
    probs = torch.stack([q, 1 - q], dim=1)
    modality = torch.tensor([HAND_Q[n][1] for n in names])
    pair_token = torch.arange(len(names))
    return pair_token, torch.zeros(len(names), dtype=torch.long), q, modality, probs


def test_hand_case_token_values_are_the_entropy_values() -> None:
    *_, probs = hand_case()
    want = [2.0, 1.5310, 1.0, 1.0290, 1.0, 1.7136]
    torch.testing.assert_close(token_value(probs), torch.tensor(want), rtol=0, atol=1e-4)
    assert [round(macs_token_value(p), 4) for p in probs.tolist()] == want


def test_hand_case_kept_set_is_exact() -> None:
    pair_token, pair_expert, gate, modality, probs = hand_case()
    names = list(HAND_Q)
    got = {names[i] for i in kept_by_mmoe(pair_token, pair_expert, gate, modality, probs, 2, 2, 3)}
    assert got == {"A", "D", "F"}
    assert {names[i] for i in kept_by_reference(pair_token, pair_expert, gate, modality, probs, 2, 3)} == got
    # capacity 2: the best of each modality; capacity 4: F's key (0.381) < B's (0.572) < C's (0.660)
    assert {names[i] for i in kept_by_mmoe(pair_token, pair_expert, gate, modality, probs, 2, 2, 2)} == {"A", "D"}
    assert {names[i] for i in kept_by_mmoe(pair_token, pair_expert, gate, modality, probs, 2, 2, 4)} == \
        {"A", "B", "D", "F"}


def test_hand_case_through_the_layer_keeps_the_same_pairs() -> None:
    """The same six tokens through MoELayer(capacity_mode="macs"): routing logits chosen so the softmax
    gives [q, 1 - q]; top-1 sends all to expert 0; capacity ceil(cf * 1 * 6 / 2) = 3."""
    pair_token, _, gate, modality, _ = hand_case()
    layer = MoELayer(2, 4, 2, 1, capacity_factor=1.0, num_modalities=2, capacity_mode="macs", backend="torch")
    # q = 0.5 nudged to 0.501 so top-1 picks expert 0 without a tie (values move by < 1e-5)
    q = torch.where(gate == 0.5, 0.501, gate).clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # logits [log q, log(1 - q)]: the softmax is [q, 1 - q]
    x = torch.stack([q.log(), (1 - q).log()], dim=1)
    layer.eval()
    layer(x, modality)
    kept_expert = layer.last_assignment[1]
    names = list(HAND_Q)
    assert {names[int(t)] for t, e in zip(layer.last_assignment[0], kept_expert) if int(e) == 0} == {"A", "D", "F"}
    assert layer.stats.dropped_per_modality.tolist() == [1, 2]


# ------------------------------------------------------------------ random cases, odd sizes
CASES = [  # T, E, k, M, capacity
    (0, 4, 2, 2, 0),        # zero tokens
    (0, 4, 2, 2, 3),
    (1, 4, 2, 2, 1),        # one token
    (1, 1, 1, 3, 1),        # one expert: every value is 2
    (3, 9, 1, 2, 1),        # experts that get nothing
    (5, 16, 2, 3, 1),
    (12, 1, 1, 2, 5),       # one expert, two modalities: ties between keys
    (17, 5, 2, 3, 3),
    (40, 6, 3, 2, 7),
    (64, 8, 2, 4, 9),
]


@pytest.mark.parametrize("T,E,k,M,capacity", CASES)
@pytest.mark.parametrize("pruned", [False, True])
def test_kept_pairs_match_the_reference(T: int, E: int, k: int, M: int, capacity: int, pruned: bool) -> None:
    gen = torch.Generator().manual_seed(1000 * T + 10 * E + k + pruned)
    for _ in range(5):
        pair_token, pair_expert, gate, modality, probs = random_pairs(gen, T, E, k, M, pruned)
        want = kept_by_reference(pair_token, pair_expert, gate, modality, probs, E, capacity)
        assert kept_by_mmoe(pair_token, pair_expert, gate, modality, probs, E, M, capacity) == want
        assert all(int(pair_expert[i]) < E for i in want)
        for e in range(E):  # no expert over capacity; an expert under capacity drops nothing
            routed = int((pair_expert == e).sum())
            assert sum(int(pair_expert[i]) == e for i in want) == min(routed, capacity)


@pytest.mark.parametrize("T,E,k,M,cf", [(0, 4, 2, 2, 0.5), (1, 4, 2, 2, 0.5), (3, 9, 1, 2, 0.5),
                                        (23, 5, 2, 3, 0.6), (40, 6, 3, 2, 0.4), (31, 4, 1, 2, 0.75)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_layer_with_macs_matches_the_reference(T: int, E: int, k: int, M: int, cf: float, renormalize: bool) -> None:
    """MoELayer(capacity_mode="macs") output and drops against naive_forward with the MACS keep rule."""
    torch.manual_seed(7 * T + E + renormalize)
    layer = MoELayer(12, 10, E, k, router_options={"renormalize": renormalize}, capacity_factor=cf,
                     num_modalities=M, capacity_mode="macs", backend="torch").eval()
    with torch.no_grad():  # sharper routing than the init (values spread over [1, 2]), not saturated
        layer.router.weight.mul_(1 + torch.rand(E, 1) * 4)
    x = torch.randn(T, 12)
    modality = torch.randint(0, M, (T,))
    with torch.no_grad():
        y = layer(x, modality)
        y_ref, dropped = naive_forward(layer, x, modality)
    scale = float(y_ref.abs().max().clamp_min(1.0)) if y_ref.numel() else 1.0
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * scale)
    assert int(layer.stats.dropped_per_modality.sum()) == dropped
    assert layer.stats.capacity == math.ceil(cf * k * T / E)
    if T >= 23:  # capacity binds in these cases: the comparison covered drops
        assert dropped > 0


def test_static_mode_differs_from_macs_on_the_hand_case() -> None:
    """The hand case is one where MACS matters: static capacity keeps by gate (A, F, B)."""
    pair_token, pair_expert, gate, _, _ = hand_case()
    keep = reference.dispatch_metadata(pair_expert, gate, 2, 3).keep
    assert {list(HAND_Q)[i] for i in keep.nonzero().flatten().tolist()} == {"A", "F", "B"}


def test_mutation_check_mutants_still_apply() -> None:
    """tests/mutation_check.py reports a mutant whose code moved as "not applied", which a rerun can
    miss: every listed mutant's pattern must still match its file exactly ``count`` times (issue 37)."""
    import re
    from pathlib import Path

    import mutation_check

    root = Path(__file__).resolve().parents[1]
    for m in (mutation_check.SANITY, *mutation_check.MUTANTS):
        text = (root / m.path).read_text()
        assert len(re.findall(m.pattern, text)) == m.count, (m.name, m.path)
        assert re.subn(m.pattern, m.replacement, text)[0] != text, m.name
        assert all(list(root.glob(g)) for g in m.tests), (m.name, m.tests)
