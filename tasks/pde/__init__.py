"""PDE neural operators: the nested-MoE operator (``model``), its LightningModule (``task``) and
what predict needs (``io``)."""

from mmoe.datamodules.pde.preprocess import PDEPreprocess
from mmoe.tasks.pde.model import NestedMoEOperator
from mmoe.tasks.pde.task import PDETask

__all__ = ["NestedMoEOperator", "PDEPreprocess", "PDETask"]
