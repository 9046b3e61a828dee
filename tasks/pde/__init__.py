"""PDE neural operators: the nested-MoE operator (``model``), its LightningModule (``task``) and
what predict needs (``io``)."""

from mmoe.tasks.pde.io import PDEPreprocess
from mmoe.tasks.pde.model import NestedMoEOperator
from mmoe.tasks.pde.task import PDETask

__all__ = ["NestedMoEOperator", "PDEPreprocess", "PDETask"]
