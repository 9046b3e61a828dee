"""Behaviour over steps: aux-loss-free bias balancing, BEAM sparsity, MACS versus static capacity."""

from __future__ import annotations

import torch

from mmoe import MoELayer


def skewed_tokens(n: int, dim: int, direction: torch.Tensor) -> torch.Tensor:
    return torch.randn(n, dim) + 2.0 * direction  # direction has unit norm


def test_aux_free_bias_balances_a_skewed_load() -> None:
    torch.manual_seed(0)
    dim, E = 16, 8
    layer = MoELayer(dim, 16, E, 2, router="sigmoid", router_options={"bias_rate": 0.01}, backend="torch")
    direction = torch.randn(dim)
    direction /= direction.norm()
    with torch.no_grad():  # experts 0 and 1 are aligned with the tokens' common direction
        layer.router.weight[:2] += direction
    layer.train()

    def imbalance() -> float:
        load = layer.stats.routed_per_expert.float()
        return float(load.max() / load.mean())

    layer(skewed_tokens(512, dim, direction))
    start = imbalance()
    late = []
    with torch.no_grad():
        for step in range(300):
            layer(skewed_tokens(512, dim, direction))
            if step >= 280:
                late.append(imbalance())
    end = sum(late) / len(late)
    assert start > 2.5, start
    assert end < 1.35, (start, end)
    assert float(layer.router.bias[:2].max()) < float(layer.router.bias[2:].min())


def test_aux_free_bias_changes_selection_not_gate_weights() -> None:
    torch.manual_seed(1)
    layer = MoELayer(8, 8, 6, 2, router="sigmoid", router_options={"renormalize": False}, backend="torch").eval()
    x = torch.randn(40, 8)
    scores = torch.sigmoid(x @ layer.router.weight.t())
    layer.router.bias.copy_(torch.tensor([5.0, 5.0, 0, 0, 0, 0]))  # forces experts 0 and 1
    layer(x)
    assert layer.stats.routed_per_expert.tolist() == [40, 40, 0, 0, 0, 0]
    # gate weights stay the unbiased sigmoid scores: the output equals a manual mix with them
    w_in, w_out = layer.experts.w_in, layer.experts.w_out
    ref = sum(scores[:, e:e + 1] * (torch.nn.functional.silu((x @ w_in[e])[:, :8]) * (x @ w_in[e])[:, 8:]) @ w_out[e]
              for e in (0, 1))
    torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5)


def test_beam_mask_lowers_active_experts_under_sparsity_loss() -> None:
    torch.manual_seed(2)
    layer = MoELayer(16, 16, 8, 4, router="beam", router_options={"sparsity_weight": 1.0}, backend="torch")
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(256, 16)
    target = torch.randn(256, 16)
    layer(x)
    start = float(layer.stats.extra["active_experts_per_token"])
    for _ in range(150):
        y = layer(x)
        loss = 1e-3 * (y - target).pow(2).mean() + layer.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(layer.stats.extra["active_experts_per_token"])
    assert start == 4.0
    assert end < 1.5, end
    assert end >= 1.0  # the top-1 expert is never pruned


def test_beam_without_sparsity_keeps_useful_experts() -> None:
    torch.manual_seed(3)
    layer = MoELayer(16, 16, 8, 4, router="beam", router_options={"sparsity_weight": 0.0}, backend="torch")
    layer(torch.randn(64, 16))
    assert float(layer.stats.extra["active_experts_per_token"]) == 4.0


def minority_setup(capacity_mode: str, seed: int = 0):
    """90% confident majority tokens, 10% low-confidence minority tokens, binding capacity."""
    torch.manual_seed(seed)
    dim, E, T = 16, 8, 2000
    layer = MoELayer(dim, 16, E, 2, capacity_factor=0.5, capacity_mode=capacity_mode,
                     num_modalities=2, backend="torch").eval()
    n_min = T // 10
    x = torch.cat([3.0 * torch.randn(T - n_min, dim), 0.3 * torch.randn(n_min, dim)])
    mod = torch.cat([torch.zeros(T - n_min, dtype=torch.long), torch.ones(n_min, dtype=torch.long)])
    perm = torch.randperm(T)
    return layer, x[perm], mod[perm]


def drop_rates(layer: MoELayer, x: torch.Tensor, mod: torch.Tensor) -> tuple[float, float, float]:
    with torch.no_grad():
        layer(x, mod)
    s = layer.stats
    pairs = s.tokens_per_modality.float() * layer.top_k
    per_mod = s.dropped_per_modality.float() / pairs
    overall = float(s.dropped_per_modality.sum() / pairs.sum())
    return float(per_mod[0]), float(per_mod[1]), overall


def test_static_capacity_starves_the_minority_modality() -> None:
    layer, x, mod = minority_setup("static")
    _, minority, overall = drop_rates(layer, x, mod)
    assert overall > 0.3  # capacity binds
    assert minority > 0.9


def test_macs_bounds_the_minority_drop_rate() -> None:
    """Bound (mmoe.capacity): a modality keeps at least half the overall kept fraction, per expert."""
    for seed in range(3):
        layer, x, mod = minority_setup("macs", seed)
        majority, minority, overall = drop_rates(layer, x, mod)
        assert overall > 0.3
        assert 1 - minority >= 0.5 * (1 - overall) - 0.02, (minority, overall)
        static, xs, ms = minority_setup("static", seed)
        static.load_state_dict(layer.state_dict())
        assert minority < drop_rates(static, xs, ms)[1] - 0.2
        # same total capacity is used: MACS moves slots between modalities, it does not add any
        assert abs(float(layer.stats.tokens_per_expert.sum()) - float(static.stats.tokens_per_expert.sum())) <= 8


def test_macs_without_contention_equals_static() -> None:
    """With one modality, MACS ranks by value inside the expert; drop counts equal static's."""
    torch.manual_seed(4)
    x = torch.randn(300, 16)
    mod = torch.zeros(300, dtype=torch.long)
    a = MoELayer(16, 16, 4, 2, capacity_factor=0.7, num_modalities=2, capacity_mode="macs")
    b = MoELayer(16, 16, 4, 2, capacity_factor=0.7, num_modalities=2, capacity_mode="static")
    b.load_state_dict(a.state_dict())
    a(x, mod), b(x, mod)
    assert a.stats.tokens_per_expert.tolist() == b.stats.tokens_per_expert.tolist()
    assert int(a.stats.dropped) == int(b.stats.dropped)


def test_pair_output_value_matches_every_expert_applied() -> None:
    from mmoe.capacity import pair_output_value
    from mmoe.kernels.reference import activate

    torch.manual_seed(5)
    for activation in ("swiglu", "gelu"):
        layer = MoELayer(12, 10, 5, 2, activation=activation)
        x = torch.randn(37, 12)
        token = torch.randint(0, 37, (61,))
        expert = torch.randint(0, 6, (61,))  # index 5 == E: a pruned pair, value 0
        gate = torch.rand(61)
        got = pair_output_value(x, token, expert, gate, layer.experts)
        w_in, w_out = layer.experts.w_in.detach(), layer.experts.w_out.detach()
        every = torch.einsum("teh,ehd->ted", activate(torch.einsum("td,edh->teh", x, w_in), activation), w_out)
        ref = torch.stack([every[t, e].norm() * g if e < 5 else torch.tensor(0.0)
                           for t, e, g in zip(token.tolist(), expert.tolist(), gate)])
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    empty = pair_output_value(x, token[:0], expert[:0], gate[:0], layer.experts)
    assert empty.shape == (0,)


def test_macs_output_keeps_the_largest_contributions_and_the_bound(monkeypatch) -> None:
    """One modality: each expert keeps its pairs of largest gate x output norm. Two modalities with
    a 90/10 mix: the minority keeps at least half the overall kept fraction, as with MACS."""
    import mmoe.moe_layer as moe_layer

    seen = {}
    original = moe_layer.pair_output_value

    def spy(x, pair_token, pair_expert, pair_weight, experts):
        seen["expert"], seen["value"] = pair_expert.clone(), original(x, pair_token, pair_expert, pair_weight, experts)
        return seen["value"]

    monkeypatch.setattr(moe_layer, "pair_output_value", spy)
    torch.manual_seed(6)
    layer = MoELayer(16, 16, 4, 2, capacity_factor=0.6, num_modalities=2, capacity_mode="macs_output")
    with torch.no_grad():
        layer(torch.randn(200, 16), torch.zeros(200, dtype=torch.long))
    kept = layer.last_assignment[1] < 4
    assert int((~kept).sum()) > 0  # capacity binds
    for e in range(4):
        at = seen["expert"] == e
        if bool((at & ~kept).any()):
            assert float(seen["value"][at & kept].min()) >= float(seen["value"][at & ~kept].max())
    for seed in range(3):
        m, xs, ms = minority_setup("macs_output", seed)
        majority, minority, overall = drop_rates(m, xs, ms)
        assert overall > 0.3
        assert 1 - minority >= 0.5 * (1 - overall) - 0.02, (minority, overall)
