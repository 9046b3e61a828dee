"""PDE data: generated families (``solvers``, ``datamodule``) and PDEBench HDF5 readers."""

from mmoe.datamodules.pde.datamodule import PDEDataModule

__all__ = ["PDEDataModule"]
