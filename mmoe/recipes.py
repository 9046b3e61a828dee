"""The shipped recipes (``mmoe list``, ``--config NAME``) and the ``mmoe`` command's entry point.

Light on purpose: ``mmoe list`` answers without importing torch or Lightning; every other
command is handed to :mod:`mmoe.cli`.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

from mmoe.datamodules import DATAMODULES
from mmoe.tasks import TASKS

__all__ = ["list_shipped", "main", "resolve_config", "shipped_configs"]


def shipped_configs() -> dict[str, Path]:
    """Shipped recipes: ``"<task>/<name>"`` -> path inside the installed ``mmoe.configs``."""
    root = Path(str(importlib.resources.files("mmoe.configs")))
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.glob("*/*.yaml"))}


def resolve_config(value: str) -> str:
    """A local file wins; otherwise a shipped recipe name (``pde/nested_moe_2d[.yaml]``, also
    ``configs/pde/nested_moe_2d.yaml``); otherwise ``value`` unchanged (the CLI reports it)."""
    if os.path.exists(value):
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml").removesuffix(".yml")
    return str(shipped_configs().get(name, value))


def _first_sentence(path: Path) -> str:
    """The recipe's leading comment up to the end of its first sentence (comments may wrap it)."""
    text = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = f"{text} {line.lstrip('# ').strip()}".strip()
        if text.endswith((".", "!", "?")):
            break
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def list_shipped() -> str:
    """One line per task and per shipped recipe (its first comment line)."""
    lines = ["tasks:"]
    for name, module in TASKS.items():
        lines.append(f"  {name:<18} {module}")
    lines.append("datamodules:")
    for name, module in DATAMODULES.items():
        lines.append(f"  {name:<18} {module}")
    lines.append("configs (mmoe fit --config NAME):")
    for name, path in shipped_configs().items():
        first = _first_sentence(path)
        lines.append(f"  {name:<24} {first}")
    return "\n".join(lines)


def main() -> None:
    """The ``mmoe`` command: ``mmoe list``, else the Lightning CLI (:func:`mmoe.cli.main`)."""
    if sys.argv[1:2] == ["list"]:
        try:
            print(list_shipped(), flush=True)
        except BrokenPipeError:  # `mmoe list | head`: the reader left, which is not an error
            sys.stdout = None  # nothing left to flush at exit
        return
    from mmoe.cli import main as cli  # noqa: PLC0415 - the heavy imports only for the commands that need them

    cli()
