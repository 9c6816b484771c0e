"""`cvt-nas train`: train one CvT with a recipe and write its record and history as JSON.

The model is a preset (``--model cvt_micro``) or a YAML file (``--config run.yaml``) holding either
CvTConfig fields, or ``model:`` (a preset name, ``{preset: NAME, ...overrides}`` or CvTConfig
fields), ``train:`` (TrainConfig fields) and ``recipe:``. CvTConfig fields that are not given keep
CvTConfig's defaults (CvT-13's layout); an empty file or ``model:`` is an error, not CvT-13.
Precedence, lowest first: recipe, the file's ``train:``, ``--dataset``/``--epochs``/..., ``--set``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from cvt_nas.commands._common import (
    device_arg,
    name_arg,
    non_negative_int,
    parse_set,
    positive_float,
    positive_int,
    set_arg,
)
from cvt_nas.common import fmt
from cvt_nas.common.names import check_name
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.presets import get_config
from cvt_nas.results.io import check_out_dir, write_run
from cvt_nas.results.records import make_record
from cvt_nas.training.config import RECIPES, TrainConfig, field_names, get_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model and write a JSON record of the result")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="PRESET", help="preset name (see `cvt-nas models`)")
    src.add_argument("--config", metavar="FILE.yaml", help="model (and training) config file")
    p.add_argument("--recipe", choices=list(RECIPES), help="training recipe (default: reduced)")
    p.add_argument("--dataset", help="fashion-mnist (default), mnist, cifar10, cifar100, "
                   "imagefolder:PATH")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument("--device", type=device_arg, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=non_negative_int, help="torch threads (default: leave as is)")
    p.add_argument("--data-root", help="torchvision-style data root (default: $CVT_NAS_DATA)")
    p.add_argument("--download", action="store_true", help="download missing data (torchvision)")
    p.add_argument("--eval-test", action="store_true", help="evaluate the test set at the end")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", type=set_arg,
                   help="override a TrainConfig or CvTConfig field (prefix model. or train. "
                        "to disambiguate), e.g. --set depth=[1,1,2] --set val_fraction=0")
    p.add_argument("--name", type=name_arg, help="run name (default: the preset or config file name)")
    p.add_argument("--out", help="output directory (default: runs/train/<name>)")
    p.add_argument("--checkpoint", action="store_true",
                   help="save a checkpoint every epoch under the output dir; resume from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the record as JSON at the end")
    p.add_argument("--dry-run", action="store_true",
                   help="check the configs, the data and the device, print the model's cost, "
                        "train nothing")
    p.set_defaults(func=run)


def build_configs(args: argparse.Namespace) -> tuple[CvTConfig, TrainConfig, str]:
    """(model config, training config, run name) from the parsed arguments."""
    file_model: Any = None
    file_train: dict[str, Any] = {}
    recipe = args.recipe
    if args.config:
        data = read_yaml(args.config, "config file", _CONFIG_HINT)
        if not data:
            raise ValueError(f"{args.config}: the config file is empty; {_CONFIG_HINT}")
        if {"model", "train", "recipe"} & set(data):
            unknown = sorted(map(str, set(data) - {"model", "train", "recipe"}))
            if unknown:
                raise ValueError(f"{args.config}: unknown top-level key(s) {unknown}; "
                                 "allowed: ['model', 'recipe', 'train']")
            file_model, file_train = data.get("model"), data.get("train") or {}
            if not file_model:
                raise ValueError(f"{args.config}: model: is missing or empty; give a preset "
                                 "name, {preset: NAME, ...overrides} or CvTConfig fields")
            if not isinstance(file_train, dict):
                raise ValueError(f"{args.config}: train: must be a mapping of TrainConfig "
                                 f"fields, got {file_train!r}")
            recipe = recipe or data.get("recipe")
            if recipe is not None and (not isinstance(recipe, str) or recipe not in RECIPES):
                raise ValueError(f"{args.config}: recipe: {recipe!r} is not one of "
                                 f"{list(RECIPES)}")
        else:
            file_model = data
        name = args.name or check_name(
            Path(args.config).stem, f"--config {args.config}: the run name (from the file name)")
    else:
        file_model, name = args.model, args.model
    model_cfg = _model_from(file_model, args.config or "--model")

    model_set, train_set = _split_set(parse_set(args.set))
    if model_set:
        try:
            model_cfg = model_cfg.replace(**model_set)
        except ValueError as exc:
            raise ValueError(f"--set: {exc}") from None
    cli = {"dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
           "lr": args.lr, "seed": args.seed, "device": args.device, "threads": args.threads,
           "data_root": args.data_root}
    overrides = {**{str(k): v for k, v in file_train.items()},
                 **{k: v for k, v in cli.items() if v is not None}}
    if args.download:
        overrides["download"] = True
    if args.eval_test:
        overrides["eval_test"] = True
    overrides.update(train_set)
    try:
        train_cfg = get_recipe(recipe or "reduced", **overrides)
    except ValueError as exc:
        where = " and ".join([*([args.config] if args.config else []), "flags/--set"])
        raise ValueError(f"{where}: {exc}") from None
    return model_cfg, train_cfg, args.name or name


_CONFIG_HINT = "give CvTConfig fields, or model:/train:/recipe: sections"


def _model_from(spec: Any, source: str) -> CvTConfig:
    if isinstance(spec, str):
        try:
            return get_config(spec)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    if isinstance(spec, dict):
        spec = dict(spec)
        preset = spec.pop("preset", None)
        if preset is not None:
            if not isinstance(preset, str):
                raise ValueError(f"{source}: preset: expected a preset name, got {preset!r}")
            try:
                return get_config(preset).replace(**{str(k): v for k, v in spec.items()})
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
        return CvTConfig.from_dict(spec, source=source)
    raise ValueError(f"{source}: 'model' must be a preset name or a mapping, got {spec!r}")


def _split_set(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route --set fields: ``model.x``/``train.x`` explicitly, else TrainConfig first.

    Names in both (img_size, drop_path) go to TrainConfig, which applies them to the model.
    """
    model_fields = set(CvTConfig.__dataclass_fields__) - {"extra"}
    train_fields = set(field_names())
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for key, value in values.items():
        prefix, _, rest = key.partition(".")
        if rest and prefix in ("model", "train"):
            (model if prefix == "model" else train)[rest] = value
        elif key in train_fields:
            train[key] = value
        elif key in model_fields:
            model[key] = value
        else:
            raise ValueError(f"--set {key}: not a TrainConfig or CvTConfig field; TrainConfig: "
                             f"{sorted(train_fields)}; CvTConfig: {sorted(model_fields)}")
    return model, train


def _print_epoch(epochs: int) -> Any:
    def report(epoch: int, m: dict[str, Any]) -> None:
        val = (f"val top-1 {m['val_top1']:.2f}% top-5 {m['val_top5']:.2f}%"
               if m["val_top1"] is not None else "no validation split")
        print(f"epoch {epoch}/{epochs}  loss {m['train_loss']:.4f}  {val}  lr {m['lr']:.2e}  "
              f"{m['images_per_s']:.0f} img/s  {m['time_s']:.0f} s", flush=True)
    return report


def run(args: argparse.Namespace) -> int:
    import torch

    from cvt_nas.training.data import load_dataset
    from cvt_nas.training.datasets import adapt_config
    from cvt_nas.training.trainer import resolve_device, run_trial

    model_cfg, train_cfg, name = build_configs(args)
    # Missing data or a missing device is a usage error (exit 2, with the fix), not a failed trial.
    load_dataset(train_cfg.dataset, train_cfg.data_root, train_cfg.download)
    out = check_out_dir(args.out or Path("runs") / "train" / name)
    adapted = adapt_config(model_cfg, train_cfg)
    device = resolve_device(train_cfg.device)
    if args.dry_run:
        cost = analytic_cost(adapted)
        print(f"{name}: {adapted.arch_id()} on {train_cfg.dataset} at {adapted.img_size} px, "
              f"{cost.params:,} params, {cost.macs:,} MACs; {train_cfg.epochs} epochs, recipe "
              f"{args.recipe or 'reduced'}, device {device}; --dry-run: nothing trained")
        return 0
    threads = train_cfg.threads or torch.get_num_threads()
    print(f"{name}: {adapted.arch_id()} on {train_cfg.dataset}, {train_cfg.epochs} epochs, "
          f"recipe {args.recipe or 'reduced'}, device {device}, {threads} threads", flush=True)
    load_before = os.getloadavg()
    result = run_trial(model_cfg, train_cfg, report=_print_epoch(train_cfg.epochs),
                       checkpoint_dir=out / f"{name}.ckpt" if args.checkpoint else None,
                       progress=not args.no_progress and sys.stderr.isatty())
    record = make_record(
        study=name, trial=0, backend="train", model_cfg=adapted, train_cfg=train_cfg,
        result=result, reason=result.error,
        extra={"command": getattr(args, "command_line", None), "recipe": args.recipe or "reduced",
               "git_commit": _git_commit(), "python_version": platform.python_version(),
               "torch_version": torch.__version__, "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "loadavg_1min_start": round(load_before[0], 2),
               "loadavg_1min_end": round(os.getloadavg()[0], 2)})
    path = write_run(out / f"{name}.json", record, result.history)
    if args.json:
        print(json.dumps({"record": record, "history": result.history}))
    print(_summary(name, train_cfg, result, path))
    if result.error:
        print(f"cvt-nas train: {result.status}: {result.error}", file=sys.stderr)
    return 0 if result.status == "complete" else 1


def _git_commit() -> str | None:
    """The checked-out commit of the cvt_nas sources (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _summary(name: str, cfg: TrainConfig, r: Any, path: Path) -> str:
    parts = [f"{name} on {cfg.dataset}: {r.status}, {r.epochs} epochs"]
    if r.val_top1 is not None:
        parts.append(f"val top-1 {r.val_top1:.2f}%")
    if r.test_top1 is not None:
        parts.append(f"test top-1 {r.test_top1:.2f}% (top-5 {r.test_top5:.2f}%)")
    parts.append(f"{fmt.params(r.params)} params, {fmt.macs(r.macs)} MACs")
    if r.images_per_s:
        parts.append(f"{r.images_per_s:.0f} img/s")
    parts.append(f"{r.wall_time_s:.0f} s -> {path}")
    return ", ".join(parts)
