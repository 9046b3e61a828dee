"""What a user sees while things run: the recipe's steps on the training bar, a predict bar only on a
terminal and only for long calls, and figure files that two validations in one epoch do not overwrite."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from mmoe.progress import predict_progress, train_description
from mmoe.routing_monitor import save_figure


def test_training_bar_counts_the_recipe_steps() -> None:
    recipe = Trainer(max_steps=4050, max_epochs=-1, logger=False, enable_checkpointing=False)  # as recipes set it
    # Lightning's own rich bar says "Epoch 0/-2" here (max_epochs - 1)
    assert train_description(recipe, 0) == "step 0/4050"
    epochs = Trainer(max_epochs=3, logger=False, enable_checkpointing=False)
    assert train_description(epochs, 1) == "epoch 2/3"


def test_predict_bar_stays_quiet_off_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY: as in CI, a pipe or a log file
    bar = predict_progress(100, "tiles")
    bar.update(100)
    bar.close()
    assert bar.disable and "tiles" not in __import__("sys").stderr.getvalue()


def test_figures_keep_every_validation(tmp_path: Path) -> None:
    trainer = Trainer(logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False)
    for step in (100, 200):  # two validations in epoch 0
        save_figure(trainer, "routing", plt.figure(), epoch=0, step=step)
    names = sorted(p.name for p in Path(trainer.log_dir, "figures").iterdir())
    assert names == ["routing_epoch000_step0000100.png", "routing_epoch000_step0000200.png"]
