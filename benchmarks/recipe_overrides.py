"""CLI overrides that benchmark scripts apply to a shipped recipe: a shorter trial or a tiny smoke run."""

from __future__ import annotations


def overrides(cfg: dict, max_steps: int | None, smoke: bool, smoke_model: dict, smoke_data: dict,
              smoke_steps: int) -> tuple[list[str], dict, dict]:
    """``(CLI overrides, the model init_args and data init_args they lead to)``.

    Args:
        cfg: the recipe (a parsed config with ``model`` and ``data`` sections).
        max_steps: override the recipe's steps (None keeps them).
        smoke: shrink model and data to ``smoke_model`` / ``smoke_data`` and run ``smoke_steps``.
        smoke_model, smoke_data: init_args of the smoke run.
        smoke_steps: steps of the smoke run when ``max_steps`` is None.
    """
    model_args = dict(cfg["model"].get("init_args") or {})
    data_args = dict(cfg["data"].get("init_args") or {})
    args: list[str] = []
    if smoke:
        max_steps = max_steps or smoke_steps
        for k, v in smoke_model.items():
            args += [f"--model.init_args.{k}", str(v)]
        for k, v in smoke_data.items():
            args += [f"--data.init_args.{k}", str(v)]
        model_args |= smoke_model
        data_args |= smoke_data
        args += ["--trainer.enable_model_summary", "false"]
    if max_steps:
        args += ["--trainer.max_steps", str(max_steps)]
        # a trial shorter than the validation interval still validates (and saves a best checkpoint) at its end
        interval = (cfg.get("trainer") or {}).get("val_check_interval")
        if isinstance(interval, int) and not isinstance(interval, bool) and interval > max_steps:
            args += ["--trainer.val_check_interval", str(max_steps)]
    return args, model_args, data_args
