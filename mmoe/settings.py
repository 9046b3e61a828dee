"""MoE settings: the one ``moe:`` section every task accepts and passes whole to its MoE blocks.

A task keeps its defaults in its recipe (``model.init_args.moe``); any field can be changed from
the CLI, e.g. ``mmoe fit --config pde/nested_moe_2d --model.init_args.moe.router beam``. The
settings reach :class:`mmoe.backbone.BlockSpec` through :meth:`MoESettings.block_fields`, so a
router registered with ``register_router`` or a capacity policy needs no task code to be chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mmoe.routers import ROUTERS, NestedRouter
from mmoe.validation import check_choice, check_number, check_positive_int

CapacityMode = Literal["dropless", "static", "macs", "macs_output", "macs_paper"]
CAPACITY_MODES: tuple[str, ...] = ("dropless", "static", "macs", "macs_output", "macs_paper")
#: routers that take no token capacity from the settings: soft slots are dropless by construction;
#: expert choice uses the capacity factor as the expert's own capacity (MACS does not apply)
_NO_MACS_ROUTERS: tuple[str, ...] = ("soft", "expert_choice")


@dataclass
class MoESettings:
    """What the MoE backbone offers, for every MoE block of a task.

    Args:
        router: a registered router name (:data:`mmoe.routers.ROUTERS`): ``softmax``, ``sigmoid``,
            ``expert_choice``, ``soft``, ``sample``, ``beam``, ``nested`` or a task's own
            (``nested_image``, ``proxy_task``).
        router_options: the router's own options besides ``groups``, e.g. ``{"sparsity_weight": 0.01}``
            (beam), ``{"slots": 2}`` (soft), ``{"bias_rate": 1e-3}`` (sigmoid).
        num_experts: routed experts per MoE layer E (group routers: all groups together, each
            group's last expert shared by its tokens).
        groups: expert groups of a group router (``nested`` and the task routers built on it); other
            routers route over all ``num_experts`` and do not use it.
        top_k: routed experts per token k (group routers: inside the chosen group).
        capacity_mode: ``"dropless"`` (no cap), ``"static"`` (the lowest gate weights drop first),
            ``"macs"`` (capacity shared among modalities by value), ``"macs_output"`` (MACS valuing
            pairs by gate x expert-output norm) or ``"macs_paper"`` (the MACS paper's rule: capacity
            scaled by the live visual/text mix, text kept first, visual pairs by entropy-weighted value;
            see :mod:`mmoe.capacity`).
        capacity_factor: ``C = ceil(cf * k * T / E)`` pairs per expert when the mode caps capacity
            (and the capacity of expert choice).
        num_shared_experts: experts applied to every token beside the routed ones.
        load_balance_weight: weight of the Switch load-balancing loss.
        z_loss_weight: weight of the router z-loss.
        dense: True replaces every MoE FFN by the task's dense twin of equal active width (a baseline).
        router_temperature: routing temperature T > 0: logits are divided by T before the routing
            softmax / sigmoid (routing only: the z-loss and supervised routing losses see raw logits).
        entropy_weight: routing-entropy weight H >= 0: the aux loss gets ``-H`` times the mean
            per-token routing entropy over ``log E`` (a bonus on spread routing).
        ecology_target: None (off), or a target expert ecology E > 0: every layer then sets H to
            ``E * (O + B) / T`` at each forward, O the task's supervised-routing weight and B
            ``load_balance_weight`` (may be 0 when the task has an O); ``entropy_weight`` must stay 0.

    Expert ecology ``E = T·H/(O+B)`` (arXiv 2605.06415) is logged per MoE layer; see
    :class:`mmoe.moe_layer.MoELayer`.
    """

    router: str = "softmax"
    router_options: dict[str, Any] = field(default_factory=dict)
    num_experts: int = 8
    groups: int = 1
    top_k: int = 2
    capacity_mode: CapacityMode = "dropless"
    capacity_factor: float = 1.25
    num_shared_experts: int = 0
    load_balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    dense: bool = False
    router_temperature: float = 1.0
    entropy_weight: float = 0.0
    ecology_target: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.router, str) or not self.router:
            raise TypeError(f"moe.router: expected a router name, got {self.router!r}")
        if not isinstance(self.router_options, dict) or not all(isinstance(k, str) for k in self.router_options):
            raise TypeError(f"moe.router_options: expected a dict with string keys, got {self.router_options!r}")
        check_positive_int("moe.num_experts", self.num_experts)
        check_positive_int("moe.top_k", self.top_k)
        check_positive_int("moe.groups", self.groups)
        if "groups" in self.router_options:
            raise ValueError("moe.router_options: 'groups' is the field moe.groups, not a router option")
        check_positive_int("moe.num_shared_experts", self.num_shared_experts, minimum=0)
        check_choice("moe.capacity_mode", self.capacity_mode, CAPACITY_MODES)
        check_number("moe.capacity_factor", self.capacity_factor, inclusive=False)
        check_number("moe.load_balance_weight", self.load_balance_weight)
        check_number("moe.z_loss_weight", self.z_loss_weight)
        check_number("moe.router_temperature", self.router_temperature, inclusive=False)
        check_number("moe.entropy_weight", self.entropy_weight)
        if self.ecology_target is not None:
            check_number("moe.ecology_target", self.ecology_target, inclusive=False)
            if self.entropy_weight:
                raise ValueError(f"moe.entropy_weight: moe.ecology_target={self.ecology_target} sets H itself; "
                                 f"expected 0 (or moe.ecology_target null), got {self.entropy_weight}")
        if not isinstance(self.dense, bool):
            raise TypeError(f"moe.dense: expected a bool, got {self.dense!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"moe.top_k: expected at most moe.num_experts={self.num_experts}, got {self.top_k}")
        if self.router in _NO_MACS_ROUTERS and self.capacity_mode in ("macs", "macs_output", "macs_paper"):
            raise ValueError(f"moe.capacity_mode: {self.capacity_mode!r} does not apply to router {self.router!r} "
                             f"(expected 'dropless' or 'static')")

    @property
    def grouped(self) -> bool:
        """True when the router picks one expert group per sample (``groups`` applies)."""
        cls = ROUTERS.get(self.router)
        return cls is not None and issubclass(cls, NestedRouter)

    @property
    def capacity(self) -> float | None:
        """The layer's ``capacity_factor``: None when dropless."""
        return None if self.capacity_mode == "dropless" else float(self.capacity_factor)

    def block_fields(self) -> dict[str, Any]:
        """The :class:`mmoe.backbone.BlockSpec` fields these settings fix."""
        return dict(
            ffn="dense" if self.dense else "moe", num_experts=self.num_experts, top_k=self.top_k, router=self.router,
            router_options={**self.router_options, "groups": self.groups} if self.grouped else dict(self.router_options),
            capacity_factor=self.capacity,
            capacity_mode="macs" if self.capacity_mode == "dropless" else self.capacity_mode,
            num_shared_experts=self.num_shared_experts, load_balance_weight=self.load_balance_weight,
            z_loss_weight=self.z_loss_weight, router_temperature=self.router_temperature,
            entropy_weight=self.entropy_weight, ecology_target=self.ecology_target,
        )

    def replace(self, **changes: Any) -> MoESettings:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)


def as_moe_settings(value: Any, default: MoESettings, name: str = "moe") -> MoESettings:
    """``value`` as :class:`MoESettings`: None gives ``default``; a dict (from a file or the CLI)
    overrides ``default`` field by field, unknown keys refused."""
    if value is None:
        return dataclasses.replace(default)
    if isinstance(value, MoESettings):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(MoESettings)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name}: unknown keys {unknown}; expected keys from {sorted(known)}")
        return dataclasses.replace(default, **value)
    raise TypeError(f"{name}: expected MoESettings or a dict of its fields, got {type(value).__name__}")


def require_router(settings: MoESettings, allowed: tuple[str, ...], task: str, why: str) -> None:
    """Refuse a router a task cannot use, naming the setting and what it can take."""
    if settings.router not in allowed:
        raise ValueError(f"moe.router: {task} cannot use router {settings.router!r} ({why}); "
                         f"expected one of {list(allowed)}")


def upgrade_legacy_moe(init_args: dict[str, Any], default: MoESettings, *, groups_key: str | None = None,
                       per_group_key: str | None = None) -> dict[str, Any]:
    """``init_args`` written before the ``moe`` section (separate ``num_experts``, ``top_k``,
    ``capacity_factor``, ``capacity_mode``, ``moe: bool`` and a task's group keys) with those keys
    folded into ``moe`` on top of ``default``; today's ``init_args`` come back unchanged.

    Args:
        init_args: the recorded constructor arguments.
        default: the task's default settings (fields the old arguments did not set).
        groups_key: the old name of the number of expert groups (e.g. ``"num_groups"``).
        per_group_key: the old name of the experts per group (e.g. ``"experts_per_group"``).
    """
    old = {"num_experts", "top_k", "capacity_factor", "capacity_mode"} | {k for k in (groups_key, per_group_key) if k}
    args = dict(init_args)
    if not (old & set(args) or isinstance(args.get("moe"), bool)):
        return args
    changes: dict[str, Any] = {}
    if isinstance(args.get("moe"), bool):
        changes["dense"] = not args.pop("moe")
    for key in ("num_experts", "top_k"):
        if key in args:
            changes[key] = args.pop(key)
    if groups_key and per_group_key and (groups_key in args or per_group_key in args):
        groups = args.pop(groups_key, default.groups)
        per_group = args.pop(per_group_key, default.num_experts // default.groups)
        changes.update(groups=groups, num_experts=groups * per_group)
    if "capacity_factor" in args or "capacity_mode" in args:
        factor, mode = args.pop("capacity_factor", None), args.pop("capacity_mode", "macs")
        changes.update(capacity_mode="dropless") if factor is None else changes.update(
            capacity_mode=mode, capacity_factor=factor)
    args["moe"] = dataclasses.asdict(dataclasses.replace(default, **changes))
    return args
