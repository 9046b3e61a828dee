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
