"""`mmunlearn` — one command line: thin wrappers that parse, call one function, say where results went."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from .train.defaults import BATCH_SIZE, LR, STAGE1_STEPS, STAGE2_STEPS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a multimodal LLM forget chosen people, keep everything else, prove both with numbers.")

DEFAULT_WORLD = Path("runs/world")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def guarded(fn):
    """Known failures (bad data, unloadable model, NaN loss...) become one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .data.errors import DataError
        from .data.record import RecordError
        from .models.base import ModelLoadError
        from .train.loop import NonFiniteLossError

        try:
            return fn(*args, **kwargs)
        except (DataError, RecordError, ModelLoadError, NonFiniteLossError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        except KeyboardInterrupt:
            # Results are written last and atomically, so an interrupted run leaves no summary.json.
            typer.echo("error: interrupted before the run finished; --out holds no final results", err=True)
            raise typer.Exit(code=130) from None

    return wrapper


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:  # pragma: no cover
        pass


@app.command()
@guarded
def world(
    out: Path = typer.Option(..., "--out", help="Folder to create (must be empty or absent)."),
    profiles: int = typer.Option(100, help="Fictitious profiles (forget + retain people)."),
    real: int = typer.Option(30, help="'Real' people learned in an earlier pre-training stage."),
    holdout: int = typer.Option(20, help="Never-trained people (membership inference)."),
    seed: int = typer.Option(0),
    image_size: int = typer.Option(32, help="Portrait size in pixels (32–64)."),
    train_phrasings: Optional[int] = typer.Option(
        None, help="Training records per (fact, task, modality), each its own phrasing (default: the world's)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Create the synthetic world: people, drawn portraits, QA splits (same seed → identical bytes)."""
    _quiet_libraries()
    from .data.store import save_world
    from .data.world import WorldConfig, build_world

    if not 16 <= image_size <= 128:
        _fail(f"--image-size must be between 16 and 128 (got {image_size})")
    t = time.perf_counter()
    if train_phrasings is not None and train_phrasings < 1:
        _fail(f"--train-phrasings must be at least 1 (got {train_phrasings})")
    extra = {} if train_phrasings is None else {"train_phrasings": train_phrasings}
    w = build_world(WorldConfig(profiles=profiles, real=real, holdout=holdout, seed=seed, image_size=image_size,
                                **extra))
    save_world(w, out, overwrite=overwrite)
    counts = {k: len(v) for k, v in w.splits.items()}
    typer.echo(f"world with {len(w.profiles)} people and {sum(counts.values())} records written to {out} "
               f"({time.perf_counter() - t:.1f}s)")


def _launch():
    """This launch's processes (torchrun / `accelerate launch` set the environment): accelerate's
    PartialState, CPU processes over gloo when there is no GPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _prepare_out(out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Every process checks --out (the same answer everywhere, so a refusal stops them all with one
    error line each and nothing written); then only the main process creates or clears it."""
    from .data.store import check_out_dir, prepare_out_dir

    state = _launch()
    check_out_dir(out, overwrite=overwrite, resume=resume)
    state.wait_for_everyone()
    if state.is_main_process:
        prepare_out_dir(out, overwrite=overwrite, resume=resume)
    state.wait_for_everyone()
    return Path(out)


def _echo(message: str) -> None:
    """Print once per launch (the main process), not once per process."""
    if _launch().is_main_process:
        typer.echo(message)


def _main_writes_json(path: Path, obj) -> None:
    from .data.store import atomic_write_json

    if _launch().is_main_process:
        atomic_write_json(path, obj)


# Options about the folder, not the run: a rerun goes to a fresh --out.
_NOT_RECORDED = ("overwrite", "resume")


def _run_options(params: dict) -> dict:
    """A command's parameters as run.json records them: paths absolute (a rerun may start elsewhere)."""
    from .models.loader import is_tiny

    options = {}
    for key, value in params.items():
        if key in _NOT_RECORDED:
            continue
        if isinstance(value, Path) or (key == "model" and value is not None and not is_tiny(value)):
            value = str(Path(value).resolve())
        elif key.endswith("_ids") and isinstance(value, str) and Path(value).is_file():
            value = str(Path(value).resolve())  # --forget-ids FILE (a list of ids stays as it is)
        options[key] = value
    return options


def _start_run(out: Path, command: str, params: dict, resolved: dict) -> dict:
    """OUT/run.json at run start (main process, atomic): what `mmunlearn rerun` needs to repeat the run."""
    from .runfolder import RUN_FILE, run_record

    options = _run_options(params)
    # the configs' copies of the input paths, as absolute as the options (a rerun gets them absolute)
    resolved = {k: options[k] if isinstance(v, str) and isinstance(options.get(k), str) and v != options[k]
                and str(Path(v).resolve()) == options[k] else v for k, v in resolved.items()}
    record = run_record(command, options, resolved)
    _main_writes_json(out / RUN_FILE, record)
    return record


def _write_card(out: Path, run: dict, log: dict | None = None, summary: dict | None = None) -> None:
    """OUT/README.md, the model card (main process, atomic); rewritten with the numbers after evaluation."""
    from .runfolder import write_model_card

    if _launch().is_main_process:
        write_model_card(out, run, log, summary)


# Who to forget, by id, from any source (world, MLLMU-Bench, CLEAR, your own people.jsonl/.csv):
# shared by every command that takes --data, so they all choose people the same way.
FORGET_IDS = typer.Option(None, "--forget-ids", help="People to forget: ID[,ID…] or a file of ids (one per line); "
                          "overrides --forget-split. Required for your own data (.jsonl/.csv).")
RETAIN_IDS = typer.Option(None, "--retain-ids", help="Retain people: ID[,ID…] or a file (default: everyone not "
                          "in --forget-ids).")
DATA_HELP = "World, MLLMU-Bench or CLEAR folder, or your own people (.jsonl / .csv / folder with metadata.jsonl)."


def _load(data: Path, forget_split: str, tofu: Optional[Path] = None, forget_ids: Optional[str] = None,
          retain_ids: Optional[str] = None, need_forget: bool = True):
    """`--data` with `--forget-split` or `--forget-ids/--retain-ids` → a DataBundle. need_forget: the
    command has nothing to do without forget people (all but finetune)."""
    from .data.errors import DataError
    from .data.store import load_data, parse_ids

    # Called from Python (demo, rerun) an option left out arrives as typer's OptionInfo: no ids.
    forget = parse_ids(forget_ids if isinstance(forget_ids, str) else None, "forget")
    retain = parse_ids(retain_ids if isinstance(retain_ids, str) else None, "retain")
    bundle = load_data(data, forget_split, tofu=tofu, forget_ids=forget, retain_ids=retain)
    if need_forget and not bundle.forget_ids:
        raise DataError(f"{data}: no one to forget: pass --forget-ids ID[,ID…] (or a file of ids)")
    return bundle


@app.command()
@guarded
def finetune(
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    model: str = typer.Option("tiny-llava", help="HF folder or tiny builder (tiny-llava, tiny-qwen2-vl, tiny-idefics3)."),
    out: Path = typer.Option(..., "--out", help="Run folder; the fine-tuned model is saved at its root."),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    stage1_steps: int = typer.Option(STAGE1_STEPS, help="Steps on the 'real' population."),
    stage2_steps: int = typer.Option(STAGE2_STEPS, help="Steps on the fictitious profiles (with replay)."),
    batch_size: int = typer.Option(BATCH_SIZE),
    lr: float = typer.Option(LR),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(500),
    log_with: Optional[str] = typer.Option(None, "--log-with", help="Track the loss and lr: tensorboard | trackio "
                                           "(logs under OUT/logs/)."),
    eval_after: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the fine-tuned model into OUT/eval."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Vanilla fine-tune: stage 1 learns the 'real' people, stage 2 every fictitious profile."""
    params = dict(locals())
    _quiet_libraries()
    from .train.finetune import FinetuneConfig, finetune as run_finetune

    # finetune uses every person (forget and retain alike); the split or ids only label them
    bundle = _load(data, "forget_10", forget_ids=forget_ids, retain_ids=retain_ids, need_forget=False)
    cfg = FinetuneConfig(model=model, stage1_steps=stage1_steps, stage2_steps=stage2_steps, batch_size=batch_size,
                         lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                         log_with=_tracking_and_selection(log_with)["log_with"])
    out = _prepare_out(out, overwrite=overwrite, resume=resume)
    from dataclasses import asdict

    run = _start_run(out, "finetune", params, asdict(cfg))
    result = run_finetune(bundle, cfg, out, resume=resume)
    log = result["train_log"]
    _write_card(out, run, log)
    _echo(f"fine-tuned {log['parameters']:,} parameters in {log['wall_time_s']:.0f}s on {log['processes']} "
          f"process(es) → {out}")
    if eval_after:
        _write_card(out, run, log, _eval_after_training(result["loaded"], out, bundle, out / "eval"))


def _tracking_and_selection(log_with, eval_every=0, eval_records=64, eval_splits="forget,retain",
                            select_by=None) -> dict:
    """--log-with / --eval-every / --eval-records / --eval-splits / --select-by checked before anything is
    loaded. Called from Python (demo, rerun of an older run) a left-out option arrives as typer's
    OptionInfo: its default."""
    from .train.selection import parse_rule
    from .train.tracking import check_tracker

    def plain(value, default):
        return default if isinstance(value, typer.models.OptionInfo) else value

    log_with, select_by = plain(log_with, None), plain(select_by, None)
    eval_every, eval_records = plain(eval_every, 0), plain(eval_records, 64)
    eval_splits = plain(eval_splits, "forget,retain")
    if select_by is not None:
        parse_rule(select_by)  # a malformed rule fails here, with its own message
    return {"log_with": check_tracker(log_with), "eval_every": eval_every, "eval_records": eval_records,
            "eval_splits": [s.strip() for s in eval_splits.split(",") if s.strip()], "select_by": select_by}


def _eval_after_training(loaded, model_dir: Path, bundle, out: Path, **kwargs) -> dict | None:
    """Evaluate after training: in place on one process; on several, every process loads the saved
    folder (a sharded model in memory is no replica) and scores its share of the records."""
    state = _launch()
    if state.num_processes == 1:
        return _run_eval(loaded, bundle, out, **kwargs)
    state.wait_for_everyone()
    from .models.loader import load_model

    return _run_eval(load_model(model_dir, device="auto"), bundle, out, **kwargs)


def _run_eval(loaded, bundle, out: Path, **kwargs) -> dict:
    """Evaluate (sharded over the launch's processes) and write OUT/summary.json from the main one."""
    from .eval.evaluator import EvalConfig, evaluate, format_table, write_results

    summary, details = evaluate(loaded, bundle, EvalConfig(**kwargs))
    if bundle.notes:
        summary["notes"] = dict(bundle.notes)
    summary["processes"] = _launch().num_processes
    if _launch().is_main_process:
        write_results(out, summary, details)
        typer.echo(format_table(summary))
        typer.echo(f"evaluation ({summary['timing']['total_s']:.0f}s) → {out / 'summary.json'}")
    _launch().wait_for_everyone()
    return summary


@app.command("eval")
@guarded
def eval_cmd(
    model: Path = typer.Option(..., "--model", help="HF model folder (e.g. a finetune/unlearn run folder), or a "
                               "tiny builder (tiny-llava…: an untrained baseline whose tokenizer is fit on --data)."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10", help="forget_5 | forget_10 | forget_15 (CLEAR: forget01/05/10)."),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    reference_summary: Optional[Path] = typer.Option(None, help="summary.json of a retain-only model → forget_quality."),
    splits: str = typer.Option(",".join(("forget", "test", "retain", "real", "understanding", "understanding_unseen"))),
    batch_size: int = typer.Option(64),
    max_records: int = typer.Option(0, help="Subsample each split to this many records (0: all)."),
    dtype: str = typer.Option("auto", help="auto (the folder's dtype) | bf16 | fp16 | fp32."),
    truth_ratio: str = typer.Option("geometric", "--truth-ratio", help="How the perturbed answers' probabilities "
                                    "are averaged: geometric (as the TOFU / CLEAR / open-unlearning code) | "
                                    "arithmetic (the TOFU paper's formula)."),
    overwrite: bool = typer.Option(False),
    tofu: Optional[Path] = typer.Option(None, "--tofu", help="CLEAR only: a local TOFU folder (forgetNN_perturbed, "
                                        "retain_perturbed, real_authors_perturbed, world_facts_perturbed) for the "
                                        "text truth ratio and the real-authors / world-facts sets."),
) -> None:
    """Evaluate a model: MLLMU-Bench / CLEAR metrics per split × modality → OUT/summary.json.

    Runs on the GPU when there is one, in the folder's dtype unless --dtype says otherwise. Launched on
    several processes (torchrun, accelerate launch) each scores its share of the records."""
    _quiet_libraries()
    from .models.loader import is_tiny, load_model, parse_dtype

    torch_dtype = parse_dtype(dtype)
    bundle = _load(data, forget_split, tofu, forget_ids, retain_ids)
    if is_tiny(model):
        from .api import load_model as load_any

        loaded = load_any(str(model), bundle)  # an untrained tiny model: a floor to read numbers against
    else:
        loaded = load_model(model, dtype=torch_dtype, device="auto")  # one replica per process
    if reference_summary is not None and not reference_summary.is_file():
        _fail(f"--reference-summary {reference_summary} does not exist")
    if truth_ratio not in ("geometric", "arithmetic"):
        _fail(f"--truth-ratio must be geometric or arithmetic, got {truth_ratio!r}")
    out = _prepare_out(out, overwrite=overwrite)
    _run_eval(loaded, bundle, out, splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
              batch_size=batch_size, max_records_per_split=max_records, truth_ratio_mean=truth_ratio,
              reference_summary=str(reference_summary) if reference_summary else None)


def _parse_method_args(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items → {KEY: value}, read as an OmegaConf dotlist (YAML scalars: 0.2 is a float,
    true a bool, text stays text)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            _fail(f"--set expects KEY=VALUE (got {item!r})")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([i.strip() for i in items]))
    except OmegaConfBaseException as exc:
        _fail(f"--set: {str(exc).splitlines()[0]}")
    return dict(parsed)


def _read_run_config(path: Path, method: str) -> dict[str, Any]:
    """--config FILE: a tuned.json (`mmunlearn tune`: the settings chosen for --method) or a YAML/JSON
    file with any of lr, steps and set (method options) → {"lr", "steps", "method_args"}."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .tune import TUNED_FORMAT, read_tuned, tuned_settings

    if not path.is_file():
        _fail(f"--config {path}: no such file")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError, OSError) as exc:
        _fail(f"--config {path}: unreadable ({str(exc).splitlines()[0]})")
    if not isinstance(raw, dict):
        _fail(f"--config {path}: expected a mapping of options")
    if raw.get("format") == TUNED_FORMAT:
        return tuned_settings(read_tuned(path), method)
    unknown = sorted(set(raw) - {"lr", "steps", "set"})
    if unknown:
        _fail(f"--config {path}: unknown key(s) {', '.join(unknown)}; a config holds lr, steps and set")
    return {"lr": raw.get("lr"), "steps": raw.get("steps"), "method_args": dict(raw.get("set") or {})}


@app.command()
@guarded
def unlearn(
    method: str = typer.Option(..., "--method", help="Method name (see `mmunlearn methods`)."),
    model: Path = typer.Option(..., "--model", help="The fine-tuned HF folder to unlearn from (or a LoRA "
                               "run's OUT/adapter folder)."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default: the method's)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the method's)."),
    batch_size: int = typer.Option(8),
    scope: Optional[str] = typer.Option(None, help="full | lora | vision | language (default: the method's)."),
    seed: int = typer.Option(0),
    reference: Optional[Path] = typer.Option(None, help="Retain-only model folder (NPO's reference)."),
    reference_summary: Optional[Path] = typer.Option(None, help="Retain-only model's eval summary → forget_quality."),
    set_: list[str] = typer.Option([], "--set", help="Method option KEY=VALUE (repeatable), e.g. --set beta=0.2"),
    config: Optional[Path] = typer.Option(None, "--config", help="A tuned.json (`mmunlearn tune`: the settings "
                                          "it chose for --method) or a YAML file with lr, steps and set; "
                                          "--lr, --steps and --set override it."),
    lora_r: int = typer.Option(8),
    lora_alpha: int = typer.Option(16),
    checkpoint_every: int = typer.Option(0, help="Save a resumable checkpoint every N steps (0: never)."),
    dtype: str = typer.Option("auto", help="Weights as loaded: auto (the folder's) | bf16 | fp16 | fp32."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="Autocast: no | bf16 | fp16."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimiser step."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
    log_with: Optional[str] = typer.Option(None, "--log-with", help="Track losses, lr and evaluations: "
                                           "tensorboard | trackio (logs under OUT/logs/)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate a subsample every N steps and after the "
                                   "last (0: never); the numbers go into unlearn_log.json."),
    eval_records: int = typer.Option(64, "--eval-records", help="Records per split in those evaluations (0: all)."),
    eval_splits: str = typer.Option("forget,retain", "--eval-splits", help="Splits those evaluations score "
                                    "(the --select-by rule's are added)."),
    select_by: Optional[str] = typer.Option(None, "--select-by", help="Which evaluated step to keep, e.g. "
                                            "min:forget/image+text/cls_acc,retain/image+text/cls_acc>=0.9 "
                                            "(default: the last). See docs/run-folders.md."),
    eval_after: bool = typer.Option(True, "--eval/--no-eval"),
    resume: bool = typer.Option(False),
    overwrite: bool = typer.Option(False),
) -> None:
    """Unlearn the forget people with one method → model at OUT, unlearn_log.json, OUT/eval/summary.json.

    On several processes launch it with `torchrun --nproc_per_node N -m mmunlearn unlearn ...` or
    `accelerate launch --config_file configs/accelerate/<ddp|fsdp2|...>.yaml -m mmunlearn unlearn ...`;
    --batch-size is per process."""
    params = dict(locals())
    _quiet_libraries()
    from dataclasses import asdict

    from .methods.base import get_method
    from .models.loader import load_model, parse_dtype
    from .train.loop import make_accelerator
    from .train.unlearn import UnlearnConfig, check_launch, unlearn as run_unlearn

    method_cls = get_method(method)
    torch_dtype = parse_dtype(dtype)
    accelerator = make_accelerator(mixed_precision, grad_accum)  # an unusable launch config stops here
    bundle = _load(data, forget_split, forget_ids=forget_ids, retain_ids=retain_ids)
    from_file = _read_run_config(config, method) if config is not None else {}
    steps = steps if steps is not None else from_file.get("steps")
    lr = lr if lr is not None else from_file.get("lr")
    method_args = {**from_file.get("method_args", {}), **_parse_method_args(set_)}
    cfg = UnlearnConfig(method=method, model=str(model), steps=steps, lr=lr, batch_size=batch_size, scope=scope,
                        seed=seed, checkpoint_every=checkpoint_every, reference=str(reference) if reference else None,
                        lora_r=lora_r, lora_alpha=lora_alpha, mixed_precision=mixed_precision, grad_accum=grad_accum,
                        gradient_checkpointing=gradient_checkpointing, method_args=method_args,
                        **_tracking_and_selection(log_with, eval_every, eval_records, eval_splits, select_by))
    method_cfg = method_cls.make_config(cfg.method_args)
    check_launch(bundle, method_cls, cfg, accelerator.num_processes)
    from .train.selection import check_rule_data
    from .train.unlearn import check_selection

    check_rule_data(check_selection(cfg, method_cls, accelerator.num_processes), bundle, cfg.eval_records, cfg.seed)
    loaded = load_model(model, dtype=torch_dtype)
    out = _prepare_out(out, overwrite=overwrite, resume=resume)
    run = _start_run(out, "unlearn", params, {
        **asdict(cfg), "steps": method_cls.default_steps if steps is None else steps,
        "lr": method_cls.default_lr if lr is None else lr, "scope": scope or method_cls.default_scope,
        "method_config": asdict(method_cfg)})
    result = run_unlearn(bundle, cfg, out, loaded=loaded, resume=resume)
    log = result.log
    _write_card(out, run, log)
    _echo(f"{method}: {log['config']['steps']} steps in {log['wall_time_s']:.1f}s on {log['processes']} process(es) "
          f"(global batch {log['global_batch']}), {log['trainable_params']:,} trainable parameters "
          f"({100 * log['trainable_share']:.1f}%) → {out}")
    if eval_after:
        summary = _eval_after_training(result.loaded, out, bundle, out / "eval",
                                       reference_summary=str(reference_summary) if reference_summary else None)
        _write_card(out, run, log, summary)


@app.command()
def methods(
    space: bool = typer.Option(False, "--space", help="Also show what `mmunlearn tune` searches per method."),
) -> None:
    """List the unlearning methods with one-line descriptions (--space: their tuning search spaces)."""
    from .methods.base import registry

    for name, cls in registry().items():
        typer.echo(f"{name:12s} {cls.summary}  [scope {cls.default_scope}, lr {cls.default_lr:g}, steps {cls.default_steps}]")
        if space:
            for key, spec in cls.tuning_space().items():
                kind = "log " if spec[0] == "log" or spec[-1] == "log" else ""
                values = spec[1] if spec[0] == "cat" else f"[{spec[1]:g}, {spec[2]:g}]"
                typer.echo(f"{'':12s}   tune {key}: {kind}{values}")


@app.command("retain-model")
@guarded
def retain_model(
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    model: str = typer.Option("tiny-llava"),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    stage1_steps: int = typer.Option(STAGE1_STEPS),
    stage2_steps: int = typer.Option(STAGE2_STEPS),
    batch_size: int = typer.Option(BATCH_SIZE),
    lr: float = typer.Option(LR),
    seed: int = typer.Option(0),
    eval_after: bool = typer.Option(True, "--eval/--no-eval"),
    overwrite: bool = typer.Option(False),
) -> None:
    """The retain-only reference: the same fine-tune without the forget people (forget_quality, NPO ref)."""
    params = dict(locals())
    _quiet_libraries()
    from dataclasses import asdict

    from .train.finetune import FinetuneConfig, finetune as run_finetune

    bundle = _load(data, forget_split, forget_ids=forget_ids, retain_ids=retain_ids)
    out = _prepare_out(out, overwrite=overwrite)
    cfg = FinetuneConfig(model=model, stage1_steps=stage1_steps, stage2_steps=stage2_steps, batch_size=batch_size,
                         lr=lr, seed=seed, exclude_ids=sorted(bundle.forget_ids))
    run = _start_run(out, "retain-model", params, asdict(cfg))
    result = run_finetune(bundle, cfg, out)
    _write_card(out, run, result["train_log"])
    _echo(f"retain-only model ({len(bundle.forget_ids)} people never seen) → {out}")
    if eval_after:
        _write_card(out, run, result["train_log"],
                    _eval_after_training(result["loaded"], out, bundle, out / "eval"))


def _rerun_kwargs(command, options: dict, source: Path) -> dict:
    """The recorded options as the command's keyword arguments: paths back to Path, options recorded
    by an older mmunlearn that this one lacks refused, newer ones at their defaults."""
    import inspect
    import typing

    from .models.loader import is_tiny

    hints = typing.get_type_hints(command)
    params = inspect.signature(command).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        _fail(f"{source}: run.json records option(s) {', '.join(unknown)} that this mmunlearn does not have")
    kwargs = {}
    for name, param in params.items():
        if name in options:
            value = options[name]
            if value is not None and Path in (hints.get(name), *typing.get_args(hints.get(name))):
                value = Path(value)
        else:
            value = getattr(param.default, "default", param.default)
            if value is ... and name != "out":
                _fail(f"{source}: run.json lacks the required option {name!r}")
        kwargs[name] = value
    # The recorded inputs must still be there (one line now, rather than a failure half-way).
    for name, value in kwargs.items():
        if name == "out" or value is None:
            continue
        if (isinstance(value, Path) or (name == "model" and not is_tiny(value))
                or (name.endswith("_ids") and isinstance(value, str) and os.path.isabs(value))):
            if not Path(value).exists():
                _fail(f"{source}: the run's input --{name.replace('_', '-')} {value} no longer exists")
    return kwargs


@app.command()
@guarded
def rerun(
    run: Path = typer.Argument(..., help="A finished (or started) unlearn, finetune or retain-model run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the new run (must be empty or absent)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Repeat a run from its OUT/run.json: the same command, inputs and options, into a new --out."""
    from . import __version__
    from .runfolder import RUN_FILE, read_run

    record = read_run(run)
    if Path(out).resolve() == Path(run).resolve():
        _fail("--out must be a new folder, not the run being repeated")
    command = {"unlearn": unlearn, "finetune": finetune, "retain-model": retain_model}[record["command"]]
    kwargs = _rerun_kwargs(command, record["options"], run / RUN_FILE)
    kwargs.update(out=out, overwrite=overwrite)
    if "resume" in kwargs:
        kwargs["resume"] = False
    if record.get("mmunlearn_version") != __version__:
        typer.echo(f"note: {run} was made by mmunlearn {record.get('mmunlearn_version')}, this is {__version__}; "
                   "results may differ", err=True)
    _echo(f"rerun of {run}: mmunlearn {record['command']} → {out}")
    command(**kwargs)


DEMO_METHODS = ("ga", "graddiff", "npo", "idk", "vkd", "smfa", "viker")


@app.command()
@guarded
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    profiles: int = typer.Option(100),
    methods_: str = typer.Option(",".join(DEMO_METHODS), "--methods", help="Methods the demo bench runs."),
    max_records: int = typer.Option(300, help="Evaluation subsample per split in the demo bench."),
) -> None:
    """The main job on the embedded default: world → fine-tune → evaluate → unlearn with several methods.

    Reuses whatever an earlier demo in OUT already finished (world, vanilla model, bench runs); ends with
    OUT/report.html, the bench as one page."""
    _quiet_libraries()
    from .methods.base import registry

    world_dir, vanilla = out / "world", out / "vanilla"
    if not (world_dir / "world.json").is_file():
        world(out=world_dir, profiles=profiles, real=30, holdout=20, seed=0, image_size=32, train_phrasings=None,
              overwrite=True)
    if not (vanilla / "eval" / "summary.json").is_file():
        finetune(data=world_dir, model="tiny-llava", out=vanilla, stage1_steps=STAGE1_STEPS,
                 stage2_steps=STAGE2_STEPS, batch_size=BATCH_SIZE, lr=LR, seed=0, checkpoint_every=500, eval_after=True, resume=False, overwrite=True,
                 forget_ids=None, retain_ids=None)
    chosen = ",".join(m for m in methods_.split(",") if m in registry())
    bench(model=vanilla, data=world_dir, out=out / "bench", methods_=chosen, forget_split="forget_10", seeds="0",
          steps=None, max_records=max_records, reference_summary=None, attacks=False, readme=None,
          forget_ids=None, retain_ids=None)
    from .report.html import write_report

    _echo(f"demo report (open it in a browser) → {write_report(out / 'bench', out / 'report.html')}")


attack_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Attacks on the forgetting: relearning, probing, membership inference.")
app.add_typer(attack_app, name="attack")


def _parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(part) for part in text.replace("%", "").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--ratios expects comma-separated percentages such as 5,10,25,50 (got {text!r})") from None
    if not ratios:
        raise ValueError(f"--ratios expects comma-separated percentages such as 5,10,25,50 (got {text!r})")
    return ratios


def _attack_results(out: Path, summary: dict, details: list) -> None:
    """details.jsonl, then summary.json last (write_results): an interrupted run leaves no summary."""
    from .eval.evaluator import write_results

    write_results(out, summary, details)


@attack_app.command("relearn")
@guarded
def attack_relearn(
    model: Path = typer.Option(..., "--model", help="The (unlearned) HF model folder to attack."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Results folder: summary.json, details.jsonl, config.json."),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    ratios: str = typer.Option("5,10,25,50", help="Percentages of the attack pool to relearn from."),
    steps: int = typer.Option(30, help="Fixed fine-tuning budget per ratio (optimiser steps)."),
    lr: float = typer.Option(5e-4),
    batch_size: int = typer.Option(8),
    scope: str = typer.Option("full", help="full | lora | vision | language."),
    split: str = typer.Option("phrasing", help="phrasing: probe = eval phrasings of all forget facts; "
                                                "facts: probe = held-out facts the attack never states."),
    seed: int = typer.Option(0),
    floor_model: Optional[Path] = typer.Option(None, "--floor-model",
                                               help="Retain-only model: the same budget gives the floor."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Relearning attack: fine-tune on r% of the forget QA, recovery of held-out probe accuracy, AG."""
    _quiet_libraries()
    from dataclasses import asdict

    from .data.store import atomic_write_json, prepare_out_dir
    from .eval.attacks.relearn import RelearnConfig, attack_split, relearn_attack
    from .models.base import adapter_for_folder
    from .models.loader import load_model

    cfg = RelearnConfig(ratios=_parse_ratios(ratios), steps=steps, lr=lr, batch_size=batch_size, scope=scope,
                        split=split, seed=seed).validate()
    bundle = _load(data, forget_split, forget_ids=forget_ids, retain_ids=retain_ids)
    attack_split(bundle, cfg.split, cfg.seed)  # unusable data fails here, before any model is loaded
    if floor_model is not None:
        adapter_for_folder(floor_model)  # fail before the run, not after the target's fine-tunes
    loaded = load_model(model)
    out = prepare_out_dir(out, overwrite=overwrite)
    atomic_write_json(out / "config.json", {"command": "attack relearn", "model": str(model), "data": str(data),
                                            "forget_split": forget_split,
                                            "floor_model": str(floor_model) if floor_model else None,
                                            **asdict(cfg)})

    def report(who: str, ratio: float, run: dict) -> None:
        typer.echo(f"{who} r={ratio:g}%: probe accuracy {run['after']['cls_acc_loglik']:.3f} "
                   f"(recovery {run['recovery']:+.3f}, {run['n_records']} records, {run['wall_time_s']:.1f}s)")

    summary, details = relearn_attack(loaded, bundle, cfg, floor=floor_model, on_ratio=report)
    _attack_results(out, summary, details)
    floor_txt = ""
    if summary["floor"]:
        floor_txt = " | floor after: " + ", ".join(f"{k}%={v:.3f}" for k, v in summary["floor"]["after"].items())
    typer.echo(f"relearn: probe accuracy before {summary['before']:.3f}, AG {summary['AG']:+.3f}{floor_txt} "
               f"→ {out / 'summary.json'}")


@attack_app.command("probe")
@guarded
def attack_probe(
    model: Path = typer.Option(..., "--model", help="The (unlearned) HF model folder to probe."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    batch_size: int = typer.Option(64),
    mia_k: float = typer.Option(0.2, help="Min-K% Prob fraction for membership inference."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Text-only, transformed-photo, paraphrase and prompt-attack probes + membership inference (AUC)."""
    _quiet_libraries()
    from dataclasses import asdict

    from .data.store import atomic_write_json, prepare_out_dir
    from .eval.attacks.probe import ProbeConfig, run_probe
    from .models.loader import load_model

    if not 0.0 < mia_k <= 1.0:
        _fail(f"--mia-k must be in (0, 1] (got {mia_k})")
    cfg = ProbeConfig(batch_size=batch_size, mia_k=mia_k)
    bundle = _load(data, forget_split, forget_ids=forget_ids, retain_ids=retain_ids)
    loaded = load_model(model)
    out = prepare_out_dir(out, overwrite=overwrite)
    atomic_write_json(out / "config.json", {"command": "attack probe", "model": str(model), "data": str(data),
                                            "forget_split": forget_split, **asdict(cfg)})
    summary, details = run_probe(loaded, bundle, cfg)
    _attack_results(out, summary, details)
    for name, res in summary["probes"].items():
        if res and res.get("leak") is not None:
            typer.echo(f"{name:20s} leak {res['leak']:.3f} (n={res['n']})")
    mia = summary["mia"]
    if mia:
        fh = mia["forget_vs_holdout"]
        typer.echo(f"{'MIA forget/holdout':20s} loss AUC {fh['loss_auc']:.3f}, min-k AUC {fh['min_k_auc']:.3f}")
    typer.echo(f"probe → {out / 'summary.json'}")


@attack_app.command("rank")
@guarded
def attack_rank(
    model: Path = typer.Option(..., "--model", help="The (unlearned) HF model folder to attack."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    photos: str = typer.Option("test", help="Split whose photos of the forget / retain people are ranked."),
    question: Optional[str] = typer.Option(None, help="Name question (default: the world's evaluation phrasing)."),
    answer_template: Optional[str] = typer.Option(None, help="Candidate answer with {name} (default: the world's "
                                                  "'The name is {name}.'; '{name}' on benchmarks)."),
    retain_people: int = typer.Option(10, help="Retain people ranked too (seeded sample; 0: none, -1: all)."),
    holdout: bool = typer.Option(True, "--holdout/--no-holdout", help="Rank the never-trained people's photos."),
    batch_size: int = typer.Option(1024, help="(photo, candidate) pairs per forward."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Identity ranking: every known name ranked by likelihood after a name question on unseen photos."""
    _quiet_libraries()
    from dataclasses import asdict

    from .data.store import atomic_write_json, prepare_out_dir
    from .eval.attacks.rank import RankConfig, photo_sets, question_and_template, run_rank
    from .models.loader import load_model

    cfg = RankConfig(photos=photos, question=question, answer_template=answer_template, retain_people=retain_people,
                     holdout=holdout, batch_size=batch_size).validate()
    bundle = _load(data, forget_split, forget_ids=forget_ids, retain_ids=retain_ids)
    question_and_template(bundle, cfg)  # unusable data (a training phrasing, no photos) fails before loading
    photo_sets(bundle, cfg)
    loaded = load_model(model)
    out = prepare_out_dir(out, overwrite=overwrite)
    atomic_write_json(out / "config.json", {"command": "attack rank", "model": str(model), "data": str(data),
                                            "forget_split": forget_split, **asdict(cfg)})
    summary, details = run_rank(loaded, bundle, cfg)
    _attack_results(out, summary, details)
    for group, res in summary["groups"].items():
        if res:
            typer.echo(f"{group:8s} top-1 {res['top1']:.2f}, top-5 {res['top5']:.2f}, MRR {res['mrr']:.3f}, "
                       f"median rank {res['median_rank']:g} of {summary['n_candidates']} ({res['n']} photos)")
    base = summary["forget_names_on_strangers"]
    if base:
        typer.echo(f"forget names on strangers' photos: median rank {base['median_rank']:g} "
                   f"(10–90 %: {base['rank_p10']:.0f}–{base['rank_p90']:.0f})")
    typer.echo(f"rank ({summary['timing']['total_s']:.1f}s) → {out / 'summary.json'}")


def _chosen_methods(methods_: str) -> list[str]:
    """--methods NAME[,NAME…] or 'all' → registered method names, in the order given; one error line for
    an unknown name (bench and tune share it)."""
    from .methods.base import registry

    known = list(registry())
    chosen = known if methods_ == "all" else [m.strip() for m in methods_.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in known]
    if unknown:
        _fail(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(known)}")
    return chosen


@app.command()
@guarded
def bench(
    model: Path = typer.Option(..., "--model", help="The fine-tuned (vanilla) HF folder every method starts from."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Bench folder (reused: finished runs are not redone)."),
    methods_: str = typer.Option("all", "--methods", help="Comma-separated method names, or 'all'."),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2."),
    default_seeds: Optional[str] = typer.Option(None, "--default-seeds", help="With --tuned: the defaults' block on "
                                                "these seeds only (default: --seeds)."),
    steps: Optional[int] = typer.Option(None, help="Override every method's step count."),
    max_records: int = typer.Option(0, help="Subsample each evaluation split (0: all)."),
    reference_summary: Optional[Path] = typer.Option(None, help="Retain-only model's summary.json → forget_quality."),
    attacks: bool = typer.Option(False, "--attacks/--no-attacks", help="Add relearn AG, text-probe leak, MIA AUC, "
                                 "identity rank."),
    floor_model: Optional[Path] = typer.Option(None, "--floor-model", help="With --attacks: a retain-only model "
                                               "(`mmunlearn retain-model`) relearned the same way → 'relearn over "
                                               "floor' (what the attack data alone does not explain)."),
    readme: Optional[Path] = typer.Option(None, help="Also write the table into this README between bench markers."),
    workers: int = typer.Option(1, "--workers", help="Runs side by side, each in a process of its own with one "
                                "torch thread; e.g. 2 on 2 cores."),
    tuned: Optional[Path] = typer.Option(None, "--tuned", help="A tuned.json (`mmunlearn tune`): every method it "
                                         "tuned also gets 'METHOD (tuned)' rows, before the defaults."),
) -> None:
    """Run every method × seed with evaluation (and attacks) → results.json / results.csv + table."""
    _quiet_libraries()
    from .bench import BenchConfig, run_bench

    chosen = _chosen_methods(methods_)
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
        default_seed_list = None if default_seeds is None else [int(x) for x in default_seeds.split(",") if x.strip()]
    except ValueError:
        _fail(f"--seeds and --default-seeds expect comma-separated integers (got {seeds!r}, {default_seeds!r})")
    if default_seed_list is not None and (tuned is None or not default_seed_list):
        _fail("--default-seeds needs --tuned and at least one seed (without --tuned, --seeds is the defaults' seeds)")
    bundle = _load(data, forget_split, forget_ids=forget_ids, retain_ids=retain_ids)
    from .models.loader import adapter_for_folder

    adapter_for_folder(model)
    if workers < 1:
        _fail(f"--workers must be at least 1 (got {workers})")
    if floor_model is not None:
        if not attacks:
            _fail("--floor-model needs --attacks (it is the relearning attack's floor)")
        adapter_for_folder(floor_model)  # fail before the bench, not after its runs
    tuned_methods: dict[str, dict] = {}
    if tuned is not None:
        from .tune import read_tuned, tuned_settings

        tuned_data = read_tuned(tuned)
        tuned_methods = {m: tuned_settings(tuned_data, m) for m in chosen if m in tuned_data["methods"]}
        if tuned_data.get("config", {}).get("seed") in seed_list:
            _fail(f"--seeds {seeds} includes the tuning seed {tuned_data['config']['seed']}: report on other seeds")
    cfg = BenchConfig(model=str(model), methods=chosen, seeds=seed_list, steps=steps, max_records=max_records,
                      reference_summary=str(reference_summary) if reference_summary else None, attacks=attacks,
                      tuned=tuned_methods, tuned_from=str(tuned) if tuned else None,
                      floor_model=str(floor_model) if floor_model else None, workers=workers,
                      default_seeds=default_seed_list)
    results = run_bench(bundle, cfg, out, progress=typer.echo)
    typer.echo(results["table_markdown"])
    typer.echo(f"results → {out / 'results.json'}, {out / 'results.csv'}")
    if readme is not None:
        _write_readme_table(readme, "bench", results)


@app.command()
@guarded
def tune(
    model: Path = typer.Option(..., "--model", help="The fine-tuned (vanilla) HF folder every trial starts from."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Tune folder: tuned.json and each trial's logs (an interrupted "
                             "tune continues: tuned methods are kept)."),
    methods_: str = typer.Option("all", "--methods", help="Comma-separated method names, or 'all'."),
    trials: int = typer.Option(16, "--trials", help="Trials per method (the same budget for every method)."),
    seed: int = typer.Option(100, help="The tuning seed (report with other seeds)."),
    eval_records: int = typer.Option(64, "--eval-records", help="Questions each trial is scored on, per split, "
                                     "modality and task the rule reads (seeded)."),
    workers: int = typer.Option(1, "--workers", help="Processes tuning methods side by side (one torch thread "
                                "each); e.g. 2 on 2 cores."),
    rule: Optional[str] = typer.Option(None, "--rule", help="Selection rule (default: tune.DEFAULT_RULE, see the "
                                       "README and docs/tuning.md); constraints may be relative to vanilla: >=0.95x."),
    tune_forget_ids: Optional[str] = typer.Option(None, "--tune-forget-ids", help="People to forget while tuning "
                                                  "(default: the world's tuning population)."),
    tune_retain_ids: Optional[str] = typer.Option(None, "--tune-retain-ids", help="People whose kept knowledge "
                                                  "scores the trials (with --tune-forget-ids)."),
) -> None:
    """Search every method's settings (optuna, the same trial budget, one selection rule) on a tuning
    population no reported run uses → OUT/tuned.json for `bench --tuned` and `unlearn --config`."""
    _quiet_libraries()
    from .data.store import parse_ids
    from .train.selection import parse_rule
    from .tune import DEFAULT_RULE, TuneConfig, run_tune

    chosen = _chosen_methods(methods_)
    if trials < 1:
        _fail(f"--trials must be at least 1 (got {trials})")
    if workers < 1:
        _fail(f"--workers must be at least 1 (got {workers})")
    if (tune_forget_ids is None) != (tune_retain_ids is None):
        _fail("--tune-forget-ids and --tune-retain-ids go together")
    parse_rule(rule or DEFAULT_RULE, allow_relative=True)  # a typo costs one line, not a tune
    if not data.exists():
        _fail(f"data {data} does not exist")
    from .models.loader import adapter_for_folder

    adapter_for_folder(model)
    cfg = TuneConfig(model=str(model), methods=chosen, trials=trials, seed=seed, eval_records=eval_records,
                     rule=rule or DEFAULT_RULE, workers=workers)
    result = run_tune(data, cfg, out, parse_ids(tune_forget_ids, "forget"), parse_ids(tune_retain_ids, "retain"),
                      progress=typer.echo)
    typer.echo(f"tuned {len(result['methods'])} method(s) in {result['timing']['total_s']:.0f}s → {out / 'tuned.json'}")


def _write_readme_table(readme: Path, name: str, results: dict) -> None:
    from .report.tables import update_readme

    cfg = results["config"]
    seeds = ",".join(str(s) for s in cfg["seeds"])
    if cfg.get("tuned_from") and cfg.get("default_seeds") is not None:
        seeds += f" (defaults: {','.join(str(s) for s in cfg['default_seeds'])})"
    note = (f"_Generated by `mmunlearn bench` (data {Path(cfg['data']).name}, {cfg['forget_split']}, seeds {seeds}"
            f"{', eval subsample ' + str(cfg['max_records']) if cfg.get('max_records') else ''}); "
            f"mean ± std over seeds where more than one._")
    from .methods.base import registry

    methods = registry()
    base = lambda label: label.split(" ")[0]  # noqa: E731  ("npo (tuned)" → npo)
    readers = sorted({base(r["method"]) for r in results.get("aggregated", [])
                      if base(r["method"]) in methods and methods[base(r["method"])].needs_reference})
    if readers:
        note += f" Reference θ0 of {', '.join(readers)}: the vanilla model itself (a frozen copy, not a retain-only model)."
    if cfg.get("tuned_from"):
        tuned_only = all(_vanilla_or_tuned(a["method"]) for a in results["aggregated"])
        note += (f" `(tuned)` rows: the settings `mmunlearn tune` chose ({Path(cfg['tuned_from']).name})"
                 + ("; the defaults' rows are left out here." if tuned_only else "; the rest: defaults."))
    if cfg.get("attacks"):
        ratios = "/".join(f"{r:g}" for r in cfg.get("relearn_ratios", ()))
        note += (f" Relearning: {cfg.get('relearn_steps')} steps on {ratios} % of the forget people's QA, split "
                 f"{cfg.get('relearn_split', 'phrasing')}; AG on log-likelihood and (gen) on generated letters"
                 + (f"; floor: the retain-only model {Path(cfg['floor_model']).name}." if cfg.get("floor_model")
                    else "."))
    update_readme(readme, name, note + "\n\n" + results["table_markdown"])
    typer.echo(f"table written into {readme}")


@app.command()
@guarded
def report(
    results: Path = typer.Argument(..., help="A bench results.json or bench folder, or a run folder."),
    readme: Optional[Path] = typer.Option(None, help="Write the table into this README between markers."),
    name: str = typer.Option("bench", help="Marker name: <!-- NAME:start --> … <!-- NAME:end -->."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write one self-contained HTML page here "
                                       "(table, trade-off, per-split bars, relearning and loss curves, per person)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="A tuned.json only: draw its trade-off (every trial, "
                                        "each method's choice) into this PNG."),
    tuned_only: bool = typer.Option(False, "--tuned-only", help="With --readme: vanilla and the '(tuned)' rows "
                                    "only (a short README; the full table goes elsewhere)."),
) -> None:
    """Print (or write into a README) the table of a bench results.json or a tune's tuned.json — from files
    only; --out: an HTML page (bench or run); --plot: a tune's trade-off PNG."""
    import json as _json

    from .report.html import bench_report, resolve, run_report, write_html
    from .report.tables import markdown_table

    if not results.exists():
        _fail(f"{results} does not exist")
    if results.is_file() and results.name.endswith(".json") and '"mmunlearn-tuned/' in results.read_text()[:200]:
        from .report.tables import update_readme
        from .report.tuning import tune_plot, tune_table
        from .tune import read_tuned

        tuned_data = read_tuned(results)
        if out is not None:
            _fail("--out (an HTML page) needs a bench or a run folder; a tune draws its plot with --plot")
        table = tune_table(tuned_data)
        typer.echo(table)
        if plot is not None:
            typer.echo(f"plot → {tune_plot(tuned_data, plot)}")
        if readme is not None:
            update_readme(readme, name, table)
        return
    if plot is not None:
        _fail("--plot needs a tuned.json (`mmunlearn tune`)")
    kind, path = resolve(results)
    if kind == "bench":
        try:
            data = _json.loads(path.read_text())
        except _json.JSONDecodeError as err:
            _fail(f"{path} is not valid JSON ({err.msg}, line {err.lineno})")
        if not isinstance(data, dict) or "table_markdown" not in data:
            _fail(f"{path} is not a bench results file (no table_markdown)")
        typer.echo(data["table_markdown"])
        page = bench_report(path) if out is not None else None
    else:
        if readme is not None:
            _fail("--readme needs a bench results.json (a run folder has no bench table)")
        page = run_report(path)
        typer.echo(markdown_table(page.table))
    if out is not None and page is not None:
        typer.echo(f"report → {write_html(page, out)}")
    if readme is not None:
        _write_readme_table(readme, name, _tuned_rows(data) if tuned_only else data)


def _vanilla_or_tuned(label: str) -> bool:
    """A row that `report --tuned-only` keeps: vanilla or a 'METHOD (tuned)' row."""
    return label == "vanilla" or label.endswith("(tuned)")


def _tuned_rows(results: dict) -> dict:
    """The results with vanilla and the '(tuned)' rows only, their table redrawn from those rows."""
    from .report.tables import markdown_table

    kept = [a for a in results["aggregated"] if _vanilla_or_tuned(a["method"])]
    if len(kept) < 2:
        _fail("--tuned-only: the bench has no '(tuned)' rows (run it with --tuned)")
    return {**results, "aggregated": kept, "table_markdown": markdown_table(kept)}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
