"""Quality of the shipped emotion configs: train each, test, print a table (and release one).

    python benchmarks/emotion.py                                   # mister_e + both ablations
    python benchmarks/emotion.py --configs mister_e --max_steps 300          # a trial, not a recipe
    python benchmarks/emotion.py --configs mister_e --release emotion-mister-e   # + zoo export
    python benchmarks/emotion.py --configs mister_e --release emotion-mister-e --release_dir /tmp/rel  # export elsewhere

Each config is trained with ``mmoe fit`` semantics (LightningCLI, the config's seed), and its
best-validation checkpoint is evaluated on the test split: weighted F1, accuracy, accuracy per
utterance type (speech-cued, text-cued, both needed, context-decided) and the mean gate weight
of each expert per type. With ``--release NAME`` the first config's checkpoint is exported to
``checkpoints/NAME.safetensors`` (fp16), loaded back with ``mmoe.load``, re-evaluated, and the
manifest row gets the released file's metrics, also on the everyday sentences
(``benchmarks/emotion_sentences.py``: text only, with the VADER and MiniLM + LR peers, the held-out
set too) and the everyday sentences the model gets wrong. Results: stdout (markdown) and
``<run_dir>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from mmoe.cli import cli_main
from mmoe.datamodules import EmotionDataModule
from mmoe.datamodules.emotion.synthetic import UTTERANCE_TYPES

if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/emotion.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.emotion`

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "emotion"
DEFAULT = ["mister_e", "speech_only", "text_only"]


@torch.no_grad()
def collect(model, datamodule: EmotionDataModule, split: str = "test") -> dict[str, torch.Tensor]:
    """Logits, labels, utterance types and gate weights of every utterance of ``split``."""
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {"logits": [], "labels": [], "types": [], "gate": []}
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[split]()
    for batch in loader:
        out = model(batch)
        valid = batch["utterance_index"] >= 0
        rows["logits"].append(out["logits"])
        rows["gate"].append(out["gate"])
        rows["labels"].append(batch["labels"][valid])
        rows["types"].append(batch["types"][valid])
    return {k: torch.cat(v) for k, v in rows.items()}


def summarize(c: dict[str, torch.Tensor], experts: list[str], num_classes: int) -> dict:
    preds, labels, types = c["logits"].argmax(-1), c["labels"], c["types"]
    out = {"weighted_f1": round(float(multiclass_f1_score(preds, labels, num_classes, average="weighted")), 4),
           "accuracy": round(float(multiclass_accuracy(preds, labels, num_classes, average="micro")), 4),
           "utterances": int(labels.numel())}
    for t, name in enumerate(UTTERANCE_TYPES):
        sel = types == t
        if bool(sel.any()):
            out[f"accuracy_{name}"] = round(float((preds[sel] == labels[sel]).float().mean()), 4)
            out[f"gate_{name}"] = {e: round(float(w), 3) for e, w in zip(experts, c["gate"][sel].float().mean(0))}
    return out


def evaluate(model, data_args: dict) -> dict:
    dm = EmotionDataModule(**data_args)
    dm.setup("test")
    return summarize(collect(model, dm), model.model.experts, dm.num_classes)


def run_config(name: str, max_steps: int | None, run_dir: str) -> dict:
    config = CONFIGS / f"{name}.yaml"
    args = ["fit", "--config", str(config), "--run_dir", run_dir, "--run_name", name,
            "--trainer.enable_progress_bar", "false"]
    if max_steps:
        args += ["--trainer.max_steps", str(max_steps)]
    start = time.perf_counter()
    cli = cli_main(args)
    train_seconds = time.perf_counter() - start
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_path
    model = type(cli.model).load_from_checkpoint(best, map_location="cpu") if best else cli.model
    cfg = yaml.safe_load(config.read_text())
    return {"config": f"configs/emotion/{name}.yaml", "seed": cfg.get("seed_everything"),
            "train_seconds": round(train_seconds, 1), "steps": trainer.global_step, "epochs": trainer.current_epoch,
            "checkpoint": best, "test": evaluate(model, cfg["data"]["init_args"])}


def everyday_metrics(model, data_args: dict) -> tuple[dict[str, float], list[dict]]:
    """Text-only weighted F1 on the everyday sentences (and the held-out ones) of ``model`` and both
    peers (see ``benchmarks/emotion_sentences.py``), and the model's mistakes."""
    from benchmarks import emotion_sentences as es

    classes = list(model.pre.class_names)
    train_texts, train_labels = es.training_text(data_args)
    systems = {"": es.model_predict(model), "vader_": es.vader_predict,
               "minilm_lr_": es.minilm_lr(train_texts, train_labels),
               "minilm_lr_all_turns_": es.minilm_lr(*es.training_text(data_args, cued_only=False))}
    metrics, failures = {}, []
    for set_name, path in (("everyday", es.SENTENCES), ("heldout", es.HELDOUT)):
        texts, labels = es.read_sentences(path)
        for prefix, predict in systems.items():
            preds = predict(texts)
            metrics[f"{set_name}_{prefix}weighted_f1"] = es.score(labels, preds, classes)["weighted_f1"]
            if not prefix:
                failures += [{"set": set_name, "text": t, "label": y, "predicted": p}
                             for t, y, p in zip(texts, labels, preds) if y != p]
    return metrics, failures


def release(run: dict, config_name: str, name: str, out_dir: Path = ROOT / "checkpoints") -> dict:
    import mmoe
    from mmoe.zoo_cli import export_checkpoint

    config_rel = f"emotion/{config_name}.yaml"
    data_args = yaml.safe_load((CONFIGS / f"{config_name}.yaml").read_text())["data"]["init_args"]
    training = (f"embedded EmotionDataModule {json.dumps(data_args, sort_keys=True)}; trained {run['train_seconds']} s "
                f"({run['steps']} steps) on 2 CPU cores, seed {run['seed']}")
    common = dict(ckpt=Path(run["checkpoint"]), name=name, config=config_rel, task="emotion", training_data=training,
                  out_dir=out_dir, dtype="float16",
                  description=f"MiSTER-E-style emotion recognition (speech + text), {config_name} config, float16 weights")
    row = export_checkpoint(metrics={}, **common)
    model = mmoe.load(out_dir / row["file"])
    r = evaluate(model, data_args)
    metrics = {k: v for k, v in r.items() if isinstance(v, float)}
    everyday, failures = everyday_metrics(model, data_args)
    # the weights file does not carry the metrics: only the manifest row changes (no second export)
    from mmoe import zoo

    manifest = out_dir / zoo.MANIFEST_NAME
    data = zoo.read_manifest(manifest)
    row = {**row, "metrics": {**metrics, **everyday}}
    zoo.write_manifest({**data, "models": [row if r["name"] == name else r for r in data["models"]]}, manifest)
    (out_dir / f"{name}.failures.json").write_text(json.dumps(failures, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT, help="config names under configs/emotion")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipes' steps (a trial)")
    parser.add_argument("--run_dir", default="runs/bench_emotion")
    parser.add_argument("--release", default=None, help="zoo name to export the first config's checkpoint as")
    parser.add_argument("--release_dir", default=str(ROOT / "checkpoints"),
                        help="folder of the exported file and its manifest")
    parser.add_argument("--reuse", action="store_true",
                        help="take the configs' runs from <run_dir>/results.json instead of training again")
    args = parser.parse_args()
    out = Path(args.run_dir) / "results.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.configs:
        if args.reuse and name in results:
            continue
        results[name] = run_config(name, args.max_steps, args.run_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    print("\n# Emotion recognition, embedded synthetic conversations, test split")
    print("| config | steps | train s | weighted F1 | accuracy | acc speech-cued | acc text-cued | acc both | acc context |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        r, t = results[name], results[name]["test"]
        accs = " | ".join(f"{t.get(f'accuracy_{k}', float('nan')):.3f}" for k in UTTERANCE_TYPES)
        print(f"| {name} | {r['steps']} | {r['train_seconds']:.0f} | {t['weighted_f1']:.4f} | {t['accuracy']:.4f} | {accs} |")
    print("\n# Mean gate weight per utterance type (test split)")
    for name in args.configs:
        t = results[name]["test"]
        for k in UTTERANCE_TYPES:
            if f"gate_{k}" in t and len(t[f"gate_{k}"]) > 1:
                print(f"| {name} | {k} | " + " | ".join(f"{e} {w:.3f}" for e, w in t[f"gate_{k}"].items()) + " |")
    if args.release:
        row = release(results[args.configs[0]], args.configs[0], args.release, Path(args.release_dir))
        print(json.dumps(row, indent=2))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
