"""Lightning datamodules, one per task. No datamodule has landed yet."""
