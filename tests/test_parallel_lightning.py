"""Lightning scale-out: ``mmoe fit`` with DDP (and with the expert-parallel strategy) for every task
through the CLI in 2 CPU processes, and the checkpoint round trip between one process and EP.

The CLI runs are real subprocesses (Lightning's DDP launcher re-runs ``python -m mmoe ...`` per
rank); every task with a harness config in tests/conf is covered, so a new task is too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mmoe
from mmoe.moe_layer import MoELayer

CONF = Path(__file__).parent / "conf"
CONFIGS = sorted(CONF.glob("*.yaml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(conf: Path, tmp: Path, **trainer: object) -> Path:
    raw = yaml.safe_load(conf.read_text())
    raw.pop("harness")
    raw["trainer"].update({"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                           "limit_test_batches": 1, "num_sanity_val_steps": 0, **trainer})
    path = tmp / f"{conf.stem}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(args: list[str], tmp: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "MMOE_HOME": str(tmp / "home"), "PL_DISABLE_FORK": "1"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "mmoe", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def moe_layers(model: torch.nn.Module) -> list[MoELayer]:
    return [m for m in model.modules() if isinstance(m, MoELayer)]


@pytest.mark.parametrize("conf,strategy", [*[(c, "ddp") for c in CONFIGS],
                                           *[(c, "ddp_expert_parallel") for c in CONFIGS if c.stem == "pde"]],
                         ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_fit_two_processes_every_task(conf: Path, strategy: str, tmp_path: Path) -> None:
    config = tiny_config(conf, tmp_path)
    proc = run_cli(["fit", "--config", str(config), "--run_dir", str(tmp_path / "runs"),
                    "--trainer.strategy", strategy, "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
                   tmp_path)
    log = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in log  # both ranks joined
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    model = mmoe.load(str(last))  # one process reads the (gathered) checkpoint
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    for layer in moe_layers(model):
        assert layer.experts.w_in.shape[0] == layer.num_experts
    assert any(k.endswith("experts.w_in") for k in ckpt["state_dict"])
    if strategy == "ddp_expert_parallel":
        # optimizer state of the experts was gathered too (a resume in one process fits)
        state = ckpt["optimizer_states"][0]["state"]
        shapes = {tuple(v["exp_avg"].shape) for v in state.values() if "exp_avg" in v}
        full = {tuple(layer.experts.w_in.shape) for layer in moe_layers(model)}
        assert full <= shapes


# ------------------------------------------------------------------ checkpoint round trip
def first_batch(cli) -> dict:
    dm = cli.datamodule
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def round_trip_worker(rank: int, world: int, port: int, config: str, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "NODE_RANK": "0", "OMP_NUM_THREADS": "1",
                       "MMOE_HOME": str(Path(tmp) / "home")})
    torch.set_num_threads(1)
    import torch.distributed as dist
    from lightning.pytorch import Callback
    from torch.nn.parallel import DistributedDataParallel

    from mmoe.cli import cli_main
    from mmoe.parallel import expert_parallel_layers

    cli = cli_main(["--config", config, "--run_dir", str(Path(tmp) / "ep_runs"),
                    # some tasks leave replicated parameters unused in a 1-batch step (per-task heads)
                    "--trainer.strategy", "ddp_expert_parallel_find_unused_parameters_true",
                    "--trainer.devices", str(world),
                    "--trainer.accelerator", "cpu", "--trainer.max_steps", "3", "--trainer.logger", "false",
                    "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                    "--trainer.default_root_dir", tmp], run=False)
    model, trainer, single = cli.model, cli.trainer, str(Path(tmp) / "single.ckpt")
    batch = torch.load(Path(tmp) / "batch.pt", weights_only=False)  # the parent's, whatever the data's randomness
    # a single-process checkpoint into an EP run (resharded on load)
    trainer.validate(model, datamodule=cli.datamodule, ckpt_path=single, verbose=False)
    assert expert_parallel_layers(model)
    # state a validation sets (the anomaly task's calibration buffers), for the parent to share
    names = {n for n, _ in model.named_buffers()}
    torch.save({k: v for k, v in model.state_dict().items() if k in names}, Path(tmp) / f"buffers_rank{rank}.pt")
    model.eval()
    with torch.no_grad():
        torch.save(model(batch), Path(tmp) / f"from_single_rank{rank}.pt")
    # resume the single-process run under EP: optimizer state resharded too, then train on
    seen: dict[str, set] = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            ddp = trainer.strategy.model
            assert isinstance(ddp, DistributedDataParallel)
            seen["ignored"] = set(ddp.parameters_to_ignore)

    trainer.callbacks.append(Probe())
    trainer.fit(model, datamodule=cli.datamodule, ckpt_path=single)
    assert trainer.global_step == 3
    ignored = seen["ignored"]
    layers = expert_parallel_layers(model)
    for name, layer in layers.items():
        assert f"{name}.experts.w_in" in ignored and f"{name}.experts.w_out" in ignored
        assert layer.experts.w_in.shape[0] == layer.num_experts // world
        shards = [torch.empty_like(layer.experts.w_in) for _ in range(world)]
        dist.all_gather(shards, layer.experts.w_in.detach().contiguous())
        assert not torch.equal(shards[0], shards[1]), f"{name}: rank 1 holds rank 0's experts"
    trainer.save_checkpoint(Path(tmp) / "ep.ckpt")  # every rank takes part in the gather
    model.eval()
    with torch.no_grad():
        torch.save(model(batch), Path(tmp) / f"from_ep_rank{rank}.pt")


@pytest.mark.parametrize("conf", CONFIGS, ids=lambda p: p.stem)
def test_checkpoint_round_trip_one_process_and_expert_parallel(conf: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """single-process ckpt -> 2-rank EP run (validate, resume fit) -> EP ckpt -> mmoe.load in one
    process; the model outputs agree on each side (the tiny configs are dropless, so a batch
    run on both ranks gives every token the single-process output)."""
    import torch.multiprocessing as mp

    from mmoe.cli import cli_main
    from test_task_harness import assert_same

    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    config = tiny_config(conf, tmp_path, max_epochs=10, limit_val_batches=1)  # max_steps governs
    cli = cli_main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "runs"), "--trainer.max_steps", "1",
                    "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                    "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    cli.trainer.save_checkpoint(tmp_path / "single.ckpt")
    batch = first_batch(cli)
    torch.save(batch, tmp_path / "batch.pt")

    from test_parallel import spawn_retrying_crashes

    outputs = [tmp_path / f"from_ep_rank{rank}.pt" for rank in range(2)]  # the last thing a worker writes
    spawn_retrying_crashes(round_trip_worker, lambda port: (2, port, str(config), str(tmp_path)), 2, outputs)

    single = mmoe.load(str(tmp_path / "single.ckpt"))
    # A validation may set state from the data it sees (the anomaly task calibrates its map on the
    # normal validation images, summed over ranks): both ranks must hold the same, and the
    # one-process model given that state must give the EP outputs.
    buffers = [torch.load(tmp_path / f"buffers_rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert buffers[0].keys() == buffers[1].keys()
    for key, value in buffers[0].items():
        torch.testing.assert_close(buffers[1][key], value, rtol=0, atol=0, msg=lambda m: f"{key}: ranks differ: {m}")
    assert not single.load_state_dict(buffers[0], strict=False).unexpected_keys
    with torch.no_grad():
        want = single(batch)
    for rank in range(2):
        assert_same(torch.load(tmp_path / f"from_single_rank{rank}.pt", weights_only=False), want)
    ep = mmoe.load(str(tmp_path / "ep.ckpt"))
    for layer in moe_layers(ep):
        assert layer.expert_parallel is None and layer.experts.w_in.shape[0] == layer.num_experts
    with torch.no_grad():
        got = ep(batch)
    for rank in range(2):
        assert_same(torch.load(tmp_path / f"from_ep_rank{rank}.pt", weights_only=False), got)
    # the EP run trained: its weights moved away from the single-process checkpoint
    moved = [k for k, v in ep.state_dict().items() if not torch.equal(v, single.state_dict()[k])]
    assert any("experts.w_in" in k for k in moved)
