"""LightningCLI YAML configs, one folder per task, shipped in the wheel."""
