"""The built wheel installs only `mmoe` and carries every .py and .yaml of the mapped folders."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"mmoe": "mmoe", "kernels": "mmoe/kernels", "tasks": "mmoe/tasks",
          "datamodules": "mmoe/datamodules", "configs": "mmoe/configs"}


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("mmoe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["mmoe"]
    expected = set()
    for folder, package in MAPPED.items():
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                expected.add(f"{package}/{f.relative_to(ROOT / folder).as_posix()}")
    assert len(expected) > 10
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    assert not any(n.split("/")[0] in ("kernels", "tasks", "datamodules", "configs") for n in names)


def test_version_is_the_distribution_version() -> None:
    """``mmoe.__version__`` (what the zoo's User-Agent and exported files carry) is pyproject's."""
    import tomllib

    import mmoe

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert mmoe.__version__ == project["version"]


def test_plain_wheel_install_loads_a_released_model_offline(tmp_path: Path) -> None:
    """The built wheel, installed (not editable) outside the checkout, loads a released model from
    the weights it carries: copied into the cache and hash-checked, with no MMOE_ZOO_URL and
    nothing but files on this machine; then again with MMOE_OFFLINE=1 from the cache."""
    import os

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("mmoe-*.whl")
    assert any(n.endswith("checkpoints/restoration-all-in-one-3.safetensors") for n in zipfile.ZipFile(wheel).namelist())
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOE_")}
    env.update(PYTHONPATH=str(target), MMOE_HOME=str(tmp_path / "home"))
    script = (
        "import sys, numpy as np, mmoe, mmoe.zoo as z\n"
        f"assert mmoe.__file__.startswith({str(target)!r}), mmoe.__file__\n"
        "assert str(z.bundled_weights_dir()).startswith(sys.argv[1])\n"
        "m = mmoe.load('restoration-all-in-one-3')\n"
        "out = m.predict(np.full((32, 32, 3), 128, np.uint8))\n"
        "print(type(out).__name__, sorted(out) if isinstance(out, dict) else out.shape)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(target)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "home" / "zoo" / "restoration-all-in-one-3.safetensors").is_file()
    offline = subprocess.run([sys.executable, "-c", "import mmoe; mmoe.load('restoration-all-in-one-3')"],
                             env=env | {"MMOE_OFFLINE": "1"}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-3000:]
