"""``mmoe.load`` treats a weights file as untrusted input: metadata cannot make it allocate more
than the file holds, build untrusted classes, read other files or the network; unreadable and
corrupt files raise ValueError naming the file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mmoe import loading
from mmoe.loading import WeightsMismatchError, load


class Tiny(nn.Module):
    """A trusted model (this module is made trusted below) with a forbidden, file-reading argument."""

    load_forbidden_args = ("notes_file",)

    def __init__(self, dim: int = 4, hidden: int = 8, depth: int = 1, notes_file: str | None = None,
                 label: str = "", scratch: int = 0, cache: int = 0) -> None:
        super().__init__()
        if notes_file is not None:
            Path(notes_file).read_text()  # what a weights file must not make a constructor do
        if scratch:  # built and thrown away: not in the state dict
            nn.Linear(scratch, scratch)
        if cache:
            self.register_buffer("cache", torch.zeros(cache), persistent=False)
        self.net = nn.Sequential(*[nn.Linear(dim if i == 0 else hidden, hidden) for i in range(depth)],
                                 nn.Linear(hidden, 2))
        self.register_buffer("scale", torch.full((2,), 2.0))
        self.register_buffer("seen", torch.zeros(hidden, dtype=torch.long), persistent=False)
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


TINY = f"{__name__}.Tiny"


@pytest.fixture(autouse=True)
def trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "TRUSTED_MODULES", ["mmoe", __name__])
    monkeypatch.delenv("MMOE_TRUSTED_MODULES", raising=False)


def zoo_file(path: Path, tensors: dict[str, torch.Tensor], class_path: str, init_args: dict[str, Any]) -> Path:
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"class_path": class_path, "init_args": json.dumps(init_args)})
    return path


def tiny_file(path: Path, **init_args: Any) -> tuple[Tiny, Path]:
    torch.manual_seed(0)
    model = Tiny()
    return model, zoo_file(path, model.state_dict(), TINY, init_args)


# Run in a fresh interpreter: the peak RSS is reset (Linux clear_refs "5") after the imports, so
# the growth is what the measured code took, whatever this process or an earlier test allocated.
GROWTH_SCRIPT = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
importlib.import_module(sys.argv[2])  # the module defining the trusted test classes
from mmoe import loading
loading.TRUSTED_MODULES = ["mmoe", sys.argv[2]]
for name in ("mmoe.tasks.base", "mmoe.tasks.pde.task"):  # imported lazily otherwise: code is not what is measured
    importlib.import_module(name)

def mib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before, error = mib("VmHWM"), None
try:
    exec(sys.argv[3])
except Exception as e:
    error = type(e).__name__
print(json.dumps({"growth_mib": mib("VmHWM") - before, "error": error}))
"""


def fresh_process_growth_mib(code: str) -> tuple[float, str | None]:
    """Peak RSS growth (MiB) of a fresh interpreter while it runs ``code`` (``loading`` imported),
    and the name of the exception ``code`` raised (None if none)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS of the subprocess")
    r = subprocess.run([sys.executable, "-c", GROWTH_SCRIPT, str(Path(__file__).parent), __name__, code],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["growth_mib"], out["error"]


def load_growth_mib(path: Path) -> tuple[float, str | None]:
    """:func:`fresh_process_growth_mib` of ``mmoe.load(path)``."""
    return fresh_process_growth_mib(f"loading.load({str(path)!r})")


def test_growth_measure_sees_an_allocation() -> None:
    """The measure is not vacuous: 400 MB allocated in the subprocess show up."""
    growth, error = fresh_process_growth_mib("import torch; x = torch.ones(100_000_000)")
    assert error is None and 350 < growth < 600


# ------------------------------------------------------------------ 1. size from metadata


def test_small_model_round_trips_with_fresh_nonpersistent_buffers(tmp_path: Path) -> None:
    model, f = tiny_file(tmp_path / "ok.safetensors")
    loaded = load(f)
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for name, t in [*loaded.named_parameters(), *loaded.named_buffers()]:
        assert t.device.type == "cpu", name
    torch.testing.assert_close(loaded.seen, torch.zeros(8, dtype=torch.long), rtol=0, atol=0)


@pytest.mark.parametrize("init_args", [
    {"dim": 2**20, "hidden": 2**20},  # 2**40 floats: today's code fails to allocate
    {"dim": 2048, "hidden": 8192, "depth": 16},  # ~4 GB, which today's code allocates (kept small: it does)
], ids=["impossible", "gigabytes"])
def test_tiny_file_with_huge_init_args_is_refused_without_allocating(tmp_path: Path, init_args: dict) -> None:
    _, f = tiny_file(tmp_path / "huge.safetensors", **init_args)
    assert f.stat().st_size < 2000
    t0 = time.perf_counter()
    with pytest.raises(WeightsMismatchError, match="size mismatch|missing keys") as exc:
        load(f)
    assert isinstance(exc.value, ValueError) and str(f) in str(exc.value)
    assert time.perf_counter() - t0 < 10
    growth, error = load_growth_mib(f)
    assert error == "WeightsMismatchError" and growth < 200


@pytest.mark.parametrize("init_args", [{"scratch": 2**20}, {"cache": 2**40}], ids=["discarded", "non-persistent"])
def test_tensors_outside_the_state_dict_count_too(tmp_path: Path, init_args: dict) -> None:
    _, f = tiny_file(tmp_path / "outside.safetensors", **init_args)
    with pytest.raises(WeightsMismatchError, match="tensor elements"):
        load(f)


def test_metadata_asking_for_millions_of_modules_is_refused_quickly(tmp_path: Path) -> None:
    _, f = tiny_file(tmp_path / "deep.safetensors", depth=10**6)
    t0 = time.perf_counter()
    with pytest.raises(WeightsMismatchError, match="register more than"):
        load(f)
    assert time.perf_counter() - t0 < 10


def test_pde_task_file_with_attack_init_args_is_refused(tmp_path: Path) -> None:
    """The 732-byte attack: a PDETask file asking for a wide model with many experts (kept to ~2 GB
    here, which today's code allocates; the same file with dim 2048 / 256 experts got it OOM-killed)."""
    from mmoe.tasks import PDETask

    args = {"dim": 1024, "hidden_dim": 4096, "depth": 1, "num_groups": 4, "experts_per_group": 8,
            "num_heads": 8, "mixer": "attention"}
    f = zoo_file(tmp_path / "attack.safetensors", {"w": torch.zeros(1)}, "mmoe.tasks.pde.PDETask", args)
    assert f.stat().st_size < 1000
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="missing keys"):
        load(f)
    assert time.perf_counter() - t0 < 30
    growth, error = load_growth_mib(f)
    assert error == "WeightsMismatchError" and growth < 300
    # the same class loads when the file holds the tensors its init args imply
    small = {"dim": 16, "depth": 1, "num_heads": 2, "hidden_dim": 16, "num_groups": 2, "experts_per_group": 2,
             "modes": 3}
    torch.manual_seed(0)
    ref = PDETask(**PDETask.upgrade_init_args(small)).eval()  # the file keeps the old argument names
    good = zoo_file(tmp_path / "good.safetensors", ref.state_dict(), "mmoe.tasks.pde.PDETask", small)
    loaded = load(good)
    x = torch.randn(2, ref.pre.in_channels, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(dict(input=x)), ref(dict(input=x)), rtol=0, atol=0)
    buffers = dict(loaded.named_buffers())
    idle = [k for k in buffers if k.endswith("idle_steps")]
    assert idle and all(buffers[k].device.type == "cpu" and not buffers[k].any() for k in idle)


def test_emotion_task_builds_on_meta_with_and_without_an_open_clip_text_encoder(tmp_path: Path) -> None:
    from mmoe.tasks import EmotionTask

    small = dict(dim=16, depth=1, fusion_depth=1, num_heads=2, hidden_dim=16,
                 moe={"num_experts": 2, "top_k": 1}, n_mels=16)
    torch.manual_seed(0)
    ref = EmotionTask(**small).eval()
    loaded = load(zoo_file(tmp_path / "emo.safetensors", ref.state_dict(), "mmoe.tasks.emotion.EmotionTask", small))
    for (k, a), (_, b) in zip(ref.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with_clip = {**small, "text_encoder": "ViT-B-32"}  # open_clip moves what it builds: still meta
    shapes = {k: tuple(v.shape) for k, v in EmotionTask(**with_clip).state_dict().items()}
    loading.check_weights_fit(EmotionTask, with_clip, shapes, "emo")  # builds on meta: no weights allocated


# ------------------------------------------------------------------ 2. trusted classes


@pytest.mark.parametrize("class_path", [
    "mmoe.loading.torch.nn.Linear",  # attribute walk from a trusted module into torch
    "mmoe.loading.nn.Linear",
    "mmoe.tasks.base.LightningModule",  # an untrusted class a trusted module imported
])
def test_class_path_resolving_outside_trusted_modules_is_refused(tmp_path: Path, class_path: str) -> None:
    lin = nn.Linear(2, 2)
    f = zoo_file(tmp_path / "walk.safetensors", lin.state_dict(), class_path, {"in_features": 2, "out_features": 2}
                 if "Linear" in class_path else {})
    with pytest.raises(ValueError, match="trusted") as exc:
        load(f)
    assert "resolves to" in str(exc.value)


def test_reexported_class_paths_resolve_to_their_trusted_module() -> None:
    from mmoe.tasks.base import BaseMoETask

    assert loading.import_class("mmoe.tasks.base.BaseMoETask") is BaseMoETask
    pde = loading.import_class("mmoe.tasks.pde.PDETask")  # re-export of mmoe.tasks.pde.task.PDETask
    assert pde is loading.import_class("mmoe.tasks.PDETask") and pde.__module__.startswith("mmoe.tasks.pde")


def test_untrusted_path_is_not_imported(tmp_path: Path) -> None:
    f = zoo_file(tmp_path / "evil.safetensors", {"w": torch.zeros(1)}, "this_module_does_not_exist.Evil", {})
    with pytest.raises(ValueError, match="trusted"):
        load(f)
    assert "this_module_does_not_exist" not in sys.modules


# ------------------------------------------------------------------ 3. no file or network access


def test_forbidden_init_arg_of_the_class_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    _, f = tiny_file(tmp_path / "reads.safetensors", notes_file=str(secret))
    calls: list[str] = []
    real = Path.read_text

    def spy(self: Path, *a: Any, **k: Any) -> str:
        calls.append(str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", spy)
    with pytest.raises(ValueError, match="notes_file=.*not taken from a weights file"):
        load(f)
    assert str(secret) not in calls
    _, ok = tiny_file(tmp_path / "default.safetensors", notes_file=None)  # None / the default is fine
    load(ok)


@pytest.mark.parametrize("label", ["hf-hub:someone/model", "local-dir:/etc", "https://example.com/w.bin",
                                   "file:///etc/passwd"])
def test_url_or_hub_reference_in_init_args_is_refused(tmp_path: Path, label: str) -> None:
    _, f = tiny_file(tmp_path / "url.safetensors", label=label)
    with pytest.raises(ValueError, match="reference to other files or the network"):
        load(f)


def test_builtin_forbidden_names_apply_to_every_class(tmp_path: Path) -> None:
    assert "text_pretrained" in loading.FORBIDDEN_INIT_ARGS
    with pytest.raises(ValueError, match="text_pretrained='openai'"):
        loading.check_init_args(Tiny, {"text_pretrained": "openai"}, "f")
    assert loading.check_init_args(Tiny, {"text_pretrained": None}, "f") == {"text_pretrained": None}


def test_emotion_file_naming_pretrained_text_weights_never_reaches_open_clip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def no_create(*a: Any, **k: Any) -> None:
        raise AssertionError("open_clip.create_model was called")

    monkeypatch.setattr(open_clip, "create_model", no_create)
    for args in ({"text_encoder": "ViT-B-32", "text_pretrained": "openai"},
                 {"text_encoder": "ViT-B-32", "text_pretrained": "/home/me/weights.bin"},
                 {"text_encoder": "hf-hub:timm/ViT-B-16-SigLIP"},
                 {"text_encoder": "local-dir:/tmp"}):
        f = zoo_file(tmp_path / "emo.safetensors", {"w": torch.zeros(1)}, "mmoe.tasks.emotion.EmotionTask", args)
        with pytest.raises(ValueError, match="text_pretrained|reference to other files"):
            load(f)


# ------------------------------------------------------------------ 4. unreadable and corrupt files


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def _bad_checkpoints(d: Path) -> dict[str, Path]:
    files = {"empty": d / "empty.ckpt", "random": d / "random.ckpt", "text": d / "text.ckpt",
             "zip": d / "garbage.ckpt", "truncated": d / "truncated.ckpt", "tensor": d / "tensor.ckpt",
             "list": d / "list.ckpt", "old_pickle": d / "old.ckpt", "code": d / "code.ckpt",
             "state_dict_list": d / "sdlist.ckpt", "state_dict_values": d / "sdvalues.ckpt",
             "hparams_list": d / "hp.ckpt"}
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(bytes(range(256)) * 4)
    files["text"].write_text("hello world")
    with zipfile.ZipFile(files["zip"], "w") as z:
        z.writestr("x", "not a checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(100)}}, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:300])
    torch.save(torch.zeros(3), files["tensor"])
    torch.save([1, 2, 3], files["list"])
    files["old_pickle"].write_bytes(pickle.dumps(5, protocol=2))
    torch.save({"state_dict": {}, "x": _Payload()}, files["code"])
    torch.save({"state_dict": [1], "mmoe_class_path": TINY, "hyper_parameters": {}}, files["state_dict_list"])
    torch.save({"state_dict": {"w": 1}, "mmoe_class_path": TINY, "hyper_parameters": {}}, files["state_dict_values"])
    torch.save({"state_dict": {}, "mmoe_class_path": TINY, "hyper_parameters": [1]}, files["hparams_list"])
    return files


def test_unreadable_checkpoints_raise_value_error_naming_the_file(tmp_path: Path) -> None:
    for kind, path in _bad_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as exc:
            load(path)
        assert str(path) in str(exc.value), (kind, exc.value)
    with pytest.raises(ValueError, match="weights_only"):
        load(tmp_path / "code.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load(tmp_path / "tensor.ckpt")


def test_unreadable_safetensors_raise_value_error(tmp_path: Path) -> None:
    bad_header = b"\x10" + b"\x00" * 7 + b"{bad json}" * 2
    for name, data in {"empty": b"", "random": os.urandom(64), "header": bad_header}.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable .safetensors"):
            load(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_bad_input(tmp_path: Path, bad: float) -> None:
    torch.manual_seed(0)
    model = Tiny()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["net.1.weight"][0, 3] = bad
    f = zoo_file(tmp_path / "nan.safetensors", sd, TINY, {})
    with pytest.raises(ValueError, match=r"'net.1.weight' holds NaN or inf"):
        load(f)
    ckpt = tmp_path / "nan.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": {}, "mmoe_class_path": TINY}, ckpt)
    with pytest.raises(ValueError, match=r"nan.ckpt: tensor 'net.1.weight' holds NaN or inf"):
        load(ckpt)
