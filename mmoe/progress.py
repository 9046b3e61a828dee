"""Progress shown to a user: the CLI's training bar (a recipe counts optimizer steps, so the bar says
how many of them are done) and the bar of a long ``predict``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from tqdm import tqdm


def train_description(trainer: Trainer, epoch: int) -> str:
    """``"step 120/4050"`` for a recipe with ``max_steps`` (Lightning's own bar says "Epoch 0/-2" there,
    from ``max_epochs=-1``), ``"epoch 2/10"`` for one with ``max_epochs``, else ``"epoch 2"``."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return f"step {trainer.global_step}/{trainer.max_steps}"
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        return f"epoch {epoch + 1}/{trainer.max_epochs}"
    return f"epoch {epoch + 1}"


class RecipeProgressBar(RichProgressBar):
    """Lightning's rich progress bar, described by :func:`train_description` and updated every batch."""

    def _get_train_description(self, current_epoch: int) -> str:
        return train_description(self.trainer, current_epoch)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=train_description(trainer, trainer.current_epoch))


def predict_progress(total: int, desc: str) -> tqdm:
    """A tqdm bar for a long ``predict`` (tiles, chunks, frames): shown only on a terminal (as
    Lightning's bars) and only once the call has run for 2 s, so short calls print nothing."""
    return tqdm(total=total, desc=desc, disable=None, delay=2.0, leave=False, dynamic_ncols=True)
