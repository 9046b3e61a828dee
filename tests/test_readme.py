"""The README's quick-start snippets, extracted from the README and run as written (so the README
cannot go stale), each with a check of the output it tells the reader to expect."""

from __future__ import annotations

import json
import re
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPETS = dict(re.findall(r"<!-- quickstart: (\w+) -->\n```python\n(.*?)```", README, flags=re.S))

# what each snippet's reader can check, on the variables the snippet defines
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "pde": lambda ns: _expect(ns["error"] < 0.01, f"heat error {ns['error']:.4f}"),
    "restoration": lambda ns: _expect(ns["psnr_out"] > ns["psnr_in"] + 3 and ns["out"]["degradation"] == "denoise",
                                      f"{ns['out']['degradation']}: {ns['psnr_in']:.2f} -> {ns['psnr_out']:.2f} dB"),
    "separation": lambda ns: _expect(ns["gain"] > 3, f"SI-SNRi {ns['gain']:.2f} dB"),
    "emotion": lambda ns: _expect(ns["labels"][0] in ("happy", "excited") and ns["labels"][1] == "sad"
                                  and ns["labels"][2] in ("angry", "frustrated"), f"labels {ns['labels']}"),
    "anomaly": lambda ns: _expect(ns["b"]["score"] > ns["a"]["score"] + 1 and ns["b"]["is_anomalous"]
                                  and ns["b"]["mask"][ns["disk"]].mean() > 0.5
                                  and ns["b"]["mask"][~ns["disk"]].mean() < 0.2,
                                  f"scores {ns['a']['score']:.2f} -> {ns['b']['score']:.2f}"),
    "tracking": lambda ns: _expect(ns["iou"] > 0.5, f"IoU {ns['iou']:.2f}"),
}


def _expect(ok: bool, what: str) -> None:
    assert ok, f"the README's snippet no longer gives what it says: {what}"


def test_every_released_model_has_a_snippet_and_a_table_row() -> None:
    manifest = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())
    tasks = {row["task"] for row in manifest["models"]}
    assert set(SNIPPETS) == tasks == set(CHECKS)
    table = README[README.index("## Released models"):]
    table = table[: table.index("\n## ", 1)]
    for row in manifest["models"]:
        assert f"`{row['name']}`" in table, f"{row['name']} has no row in the README's model table"
        for key in ("training_data", "intended_use", "limitations"):
            assert isinstance(row.get(key), str) and len(row[key]) > 40, f"{row['name']}: model card lacks {key}"


@pytest.mark.parametrize("task", sorted(CHECKS))
def test_quick_start(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path))
    monkeypatch.delenv("MMOE_ZOO_URL", raising=False)
    monkeypatch.setenv("MMOE_OFFLINE", "1")  # the bundled weights: no network, no download
    namespace: dict[str, Any] = {"__name__": f"readme_{task}"}
    exec(compile(SNIPPETS[task], f"README.md quickstart {task}", "exec"), namespace)  # noqa: S102
    assert capsys.readouterr().out.strip(), "the snippet prints nothing to check"
    CHECKS[task](namespace)
