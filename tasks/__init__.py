"""Lightning task modules (BaseMoETask and one module per task). No task has landed yet."""
