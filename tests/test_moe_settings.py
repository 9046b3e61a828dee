"""The one ``moe:`` section (mmoe.settings.MoESettings): every router and capacity mode through every
task's CLI (a one-step fit of its tests/conf harness config), clear refusals where a router cannot
apply, and released files written with the old argument names still loading."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import mmoe
from mmoe.cli import cli_main
from mmoe.loading import import_class
from mmoe.moe_layer import MoELayer
from mmoe.settings import MoESettings, as_moe_settings, upgrade_legacy_moe

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "tests" / "conf"
TASKS = sorted(p.stem for p in CONF.glob("*.yaml"))
ROUTERS = ["softmax", "sigmoid", "expert_choice", "soft", "sample", "beam", "nested", "nested_image", "proxy_task"]
#: routers a task refuses, and the words its error gives (the rest must train)
REFUSED = {
    "emotion": ({"soft", "sample", "nested", "nested_image", "proxy_task"}, "routes each token on its own"),
    "restoration": (set(ROUTERS) - {"nested_image"}, "restoration cannot use router"),
}
NEEDS_TASK_IDS = "needs 'task_ids' set by its task model"


def _fit(task: str, tmp_path: Path, *overrides: str):
    raw = yaml.safe_load((CONF / f"{task}.yaml").read_text())
    raw.pop("harness")
    raw["trainer"].update(fast_dev_run=1, enable_progress_bar=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return cli_main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "runs"), *overrides])


def _layers(cli) -> list[MoELayer]:
    return [m for m in cli.model.modules() if isinstance(m, MoELayer)]


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("task", TASKS)
def test_every_router_trains_in_every_task_or_is_refused_by_name(task: str, router: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    refused, words = REFUSED.get(task, (set(), ""))
    if router == "proxy_task" and task != "anomaly":
        refused, words = {router}, NEEDS_TASK_IDS
    if router in refused:
        with pytest.raises(ValueError, match=rf"moe\.router: .*{words}|moe\.router: .*{router}"):
            _fit(task, tmp_path, "--model.init_args.moe.router", router)
        return
    cli = _fit(task, tmp_path, "--model.init_args.moe.router", router)
    layers = _layers(cli)
    assert layers and cli.trainer.global_step == 1
    # the chosen router in every MoE block (tracking's fusion blocks stay soft by design)
    kinds = {m.router_kind for m in layers}
    assert router in kinds and kinds <= {router, "soft"}
    assert cli.model.moe.router == router
    assert all(m.aux_loss is not None and torch.isfinite(m.aux_loss) for m in layers)


@pytest.mark.parametrize("mode", ["static", "macs", "macs_output"])
@pytest.mark.parametrize("task", TASKS)
def test_every_capacity_mode_trains_in_every_task(task: str, mode: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    cli = _fit(task, tmp_path, "--model.init_args.moe.capacity_mode", mode,
               "--model.init_args.moe.capacity_factor", "0.5")
    capped = [m for m in _layers(cli) if m.router_kind != "soft"]  # soft slots are dropless by construction
    assert capped and all(m.capacity_mode == mode and m.capacity_factor == 0.5 for m in capped)
    # a factor of 0.5 binds: some routed pairs were dropped (and counted) in the last forward
    assert sum(int(m.stats.dropped_per_modality.sum()) for m in capped) > 0


def test_dense_twin_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    cli = _fit("pde", tmp_path, "--model.init_args.moe.dense", "true")
    assert not _layers(cli) and cli.trainer.global_step == 1


def test_settings_check_their_fields() -> None:
    for bad, match in ((dict(top_k=9), "moe.top_k: expected at most moe.num_experts=8"),
                       (dict(num_experts=0), "moe.num_experts"), (dict(capacity_factor=0.0), "moe.capacity_factor"),
                       (dict(capacity_mode="fair"), "moe.capacity_mode"), (dict(groups=0), "moe.groups"),
                       (dict(router_options={"groups": 2}), "moe.groups, not a router option"),
                       (dict(router="soft", capacity_mode="macs"), "does not apply to router 'soft'"),
                       (dict(load_balance_weight=-1.0), "moe.load_balance_weight")):
        with pytest.raises((ValueError, TypeError), match=match):
            MoESettings(**bad)
    with pytest.raises(TypeError, match="moe.dense"):
        MoESettings(dense="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown keys \\['experts'\\]"):
        as_moe_settings({"experts": 3}, MoESettings())


def test_block_fields_map_modes_and_groups() -> None:
    nested = MoESettings(router="nested", groups=4, num_experts=16, top_k=1)
    assert nested.grouped and nested.block_fields()["router_options"] == {"groups": 4}
    assert nested.block_fields()["capacity_factor"] is None  # dropless
    static = MoESettings(capacity_mode="static", capacity_factor=0.75, groups=3)
    fields = static.block_fields()
    assert not static.grouped and fields["router_options"] == {}  # groups only reach group routers
    assert (fields["capacity_factor"], fields["capacity_mode"], fields["ffn"]) == (0.75, "static", "moe")
    assert MoESettings(dense=True).block_fields()["ffn"] == "dense"
    # a dict overrides the task's default field by field
    merged = as_moe_settings({"router": "beam"}, nested)
    assert (merged.router, merged.num_experts, merged.groups) == ("beam", 16, 4)


def test_legacy_arguments_fold_into_moe() -> None:
    default = MoESettings(router="nested", groups=4, num_experts=16, top_k=1)
    old = {"dim": 8, "num_groups": 2, "experts_per_group": 3, "top_k": 2, "capacity_factor": 1.5,
           "capacity_mode": "static", "moe": False}
    new = upgrade_legacy_moe(old, default, groups_key="num_groups", per_group_key="experts_per_group")
    assert new["dim"] == 8 and set(new) == {"dim", "moe"}
    assert new["moe"] == dataclasses.asdict(default.replace(groups=2, num_experts=6, top_k=2, capacity_mode="static",
                                                            capacity_factor=1.5, dense=True))
    # dropless before: capacity_factor None whatever the mode
    assert upgrade_legacy_moe({"capacity_factor": None}, default)["moe"]["capacity_mode"] == "dropless"
    today = {"dim": 8, "moe": {"router": "softmax"}}
    assert upgrade_legacy_moe(today, default) == today


@pytest.mark.parametrize("entry", mmoe.list_models(), ids=lambda e: e["name"])
def test_released_files_keep_their_key_layout(entry: dict) -> None:
    """A released file records the argument names of its day; upgraded, they build exactly its tensors."""
    path = ROOT / "checkpoints" / entry["file"]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    cls = import_class(meta["class_path"])
    args = cls.upgrade_init_args(json.loads(meta["init_args"]))
    assert isinstance(args["moe"], dict)
    model = cls(**args)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
