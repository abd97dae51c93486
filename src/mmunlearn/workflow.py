"""Whole runs, as the command line makes them: validate every input, then create the run folder, train,
write run.json, the model card and the evaluation.

Why a layer of its own: a command's body is "parse, call one function here, say where the results went",
and `demo` and `rerun` call these same functions with plain Python values. A new option on one command can
then never break another (the demo once crashed on a typer placeholder it was handed for an option it did
not pass). Every function here takes its options as keyword arguments with real defaults, and run.json
records them under the same names, so `rerun` hands them back unchanged.

Order inside each run: cheap checks, then the data, then the model (each can fail with one line), and only
then the output folder. A refused run leaves --out absent or untouched, so the retry is not refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from .data.errors import DataError
from .train.defaults import BATCH_SIZE, CHECKPOINT_EVERY, LR

log = logging.getLogger("mmunlearn")

EVAL_SPLITS = ("forget", "test", "retain", "real", "understanding", "understanding_unseen")
SCOPES = ("full", "lora", "vision", "language")
# Options about the folder, not the run: not recorded in run.json (a rerun goes to a fresh --out; the old
# one is recorded for people reading the file, and dropped by rerun).
NOT_RECORDED = ("overwrite", "resume")
# Options an older mmunlearn recorded under another name (rerun of an older run folder).
RENAMED = {"set_": "set_items", "eval_records": "max_records"}


# --------------------------------------------------------------------------------------------
# Launch helpers: one answer on every process, files from the main one
# --------------------------------------------------------------------------------------------

def launch_state():
    """This launch's processes (torchrun / `accelerate launch` set the environment): accelerate's
    PartialState, CPU processes over gloo when there is no GPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return launch_state().is_main_process


def say(message: str) -> None:
    """One line for the user, once per launch (the main process), through the `mmunlearn` logger."""
    if is_main():
        log.info(message)


def prepare_out(out: str | Path, overwrite: bool = False, resume: bool | None = None) -> Path:
    """Every process checks --out (the same answer everywhere, so a refusal stops them all with one error
    line each and nothing written); then only the main process creates or clears it."""
    from .data.store import check_out_dir, prepare_out_dir

    state = launch_state()
    check_out_dir(out, overwrite=overwrite, resume=bool(resume), resumable=resume is not None)
    state.wait_for_everyone()
    if state.is_main_process:
        prepare_out_dir(out, overwrite=overwrite, resume=bool(resume), resumable=resume is not None)
    state.wait_for_everyone()
    return Path(out)


def check_out(out: str | Path, overwrite: bool = False, resume: bool | None = None) -> None:
    """Refuse an unusable --out before any work (it is checked again, and made, when the run starts).
    `resume`: None for a command without --resume."""
    from .data.store import check_out_dir

    check_out_dir(out, overwrite=overwrite, resume=bool(resume), resumable=resume is not None)


def positive(name: str, value: int | float | None, zero_ok: bool = False) -> None:
    """ValueError (one `error:` line) for a count or rate that must be > 0 (or ≥ 0)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"--{name} must be {'0 or more' if zero_ok else 'greater than 0'} (got {value:g})")


def split_list(text: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(s.strip() for s in text.split(",") if s.strip())
    return tuple(text)


def load_bundle(data: str | Path, forget_split: str = "forget_10", forget_ids: str | Iterable[str] | None = None,
                retain_ids: str | Iterable[str] | None = None, tofu: str | Path | None = None,
                need_forget: bool = True, need_retain: bool = False):
    """`--data` with `--forget-split` or `--forget-ids/--retain-ids` → a DataBundle. need_forget: the command
    has nothing to do without forget people (all but finetune); need_retain: nor without anyone to keep."""
    from .data.store import load_data, parse_ids

    forget = parse_ids(forget_ids, "forget") if isinstance(forget_ids, str) else forget_ids
    retain = parse_ids(retain_ids, "retain") if isinstance(retain_ids, str) else retain_ids
    bundle = load_data(data, forget_split, tofu=tofu, forget_ids=forget, retain_ids=retain)
    if need_forget and not bundle.forget_ids:
        raise DataError(f"{data}: no one to forget: pass --forget-ids ID[,ID…] (or a file of ids)")
    if need_retain and not bundle.retain_ids:
        raise DataError(f"{data}: --forget-ids names everyone ({len(bundle.forget_ids)} people): leave at least "
                        "one person to keep (the retain side)")
    return bundle


def run_options(params: dict) -> dict:
    """A run's options as run.json records them: paths absolute (a rerun may start elsewhere)."""
    from .models.loader import is_tiny

    options = {}
    for key, value in params.items():
        if key in NOT_RECORDED:
            continue
        if isinstance(value, Path) or (key in ("model", "data", "reference", "reference_summary", "config")
                                       and value is not None and not (key == "model" and is_tiny(value))):
            value = str(Path(value).resolve())
        elif key.endswith("_ids") and isinstance(value, str) and Path(value).is_file():
            value = str(Path(value).resolve())  # --forget-ids FILE (a list of ids stays as it is)
        options[key] = value
    return options


def start_run(out: Path, command: str, params: dict, resolved: dict) -> dict:
    """OUT/run.json at run start (main process, atomic): what `mmunlearn rerun` needs to repeat the run."""
    from .data.store import atomic_write_json
    from .runfolder import RUN_FILE, run_record

    options = run_options(params)
    # the configs' copies of the input paths, as absolute as the options (a rerun gets them absolute)
    resolved = {k: options[k] if isinstance(v, str) and isinstance(options.get(k), str) and v != options[k]
                and str(Path(v).resolve()) == options[k] else v for k, v in resolved.items()}
    record = run_record(command, options, resolved)
    if is_main():
        atomic_write_json(out / RUN_FILE, record)
    return record


def write_card(out: Path, run: dict, log_: dict | None = None, summary: dict | None = None) -> None:
    """OUT/README.md, the model card (main process, atomic); rewritten with the numbers after evaluation."""
    from .runfolder import write_model_card

    if is_main():
        write_model_card(out, run, log_, summary)


def evaluate_into(loaded, bundle, out: Path, **config: Any) -> dict:
    """Evaluate (sharded over the launch's processes) and write OUT/summary.json from the main process."""
    from .eval.evaluator import EvalConfig, evaluate, format_table, write_results

    summary, details = evaluate(loaded, bundle, EvalConfig(**config))
    if bundle.notes:
        summary["notes"] = dict(bundle.notes)
    state = launch_state()
    summary["processes"] = state.num_processes
    if state.is_main_process:
        write_results(out, summary, details)
        log.info(format_table(summary))
        log.info(f"evaluation ({summary['timing']['total_s']:.0f}s) → {out / 'summary.json'}")
    state.wait_for_everyone()
    return summary


def evaluate_after_training(loaded, model_dir: Path, bundle, out: Path, **config: Any) -> dict:
    """Evaluate after training: in place on one process; on several, every process loads the saved folder
    (a sharded model in memory is no replica) and scores its share of the records."""
    state = launch_state()
    if state.num_processes == 1:
        return evaluate_into(loaded, bundle, out, **config)
    state.wait_for_everyone()
    from .models.loader import load_model

    return evaluate_into(load_model(model_dir, device="auto"), bundle, out, **config)


# --------------------------------------------------------------------------------------------
# world, finetune, retain-model
# --------------------------------------------------------------------------------------------

def make_world(out: str | Path, *, profiles: int = 100, real: int = 30, holdout: int = 20, seed: int = 0,
               image_size: int = 32, train_phrasings: int | None = None, identity: str = "look",
               overwrite: bool = False) -> dict:
    """The synthetic world (data/world.py) written to `out` → its record counts per split. `identity`: "look"
    (the default world) or "face" (shirt and accessory change from photo to photo; data/portraits.py)."""
    from .data.portraits import check_identity
    from .data.store import save_world
    from .data.world import WorldConfig, build_world

    if not 16 <= image_size <= 128:
        raise ValueError(f"--image-size must be between 16 and 128 (got {image_size})")
    positive("profiles", profiles)
    positive("real", real, zero_ok=True)
    positive("holdout", holdout, zero_ok=True)
    if train_phrasings is not None and train_phrasings < 1:
        raise ValueError(f"--train-phrasings must be at least 1 (got {train_phrasings})")
    check_identity(identity)
    check_out(out, overwrite=overwrite)
    extra = {} if train_phrasings is None else {"train_phrasings": train_phrasings}
    world = build_world(WorldConfig(profiles=profiles, real=real, holdout=holdout, seed=seed, image_size=image_size,
                                    identity=identity, **extra))
    save_world(world, out, overwrite=overwrite)
    return {"people": len(world.profiles), "records": {k: len(v) for k, v in world.splits.items()}}


def _finetune_config(bundle, model: str, stage0_steps: int | None, stage1_steps: int | None,
                     stage2_steps: int | None, batch_size: int, lr: float, seed: int, checkpoint_every: int,
                     log_with: str | None, exclude_ids: list[str] | None = None):
    """The fine-tune's settings, schedules scaled to the data when left out (train/finetune.py)."""
    from .train.finetune import FinetuneConfig, scaled_schedule
    from .train.tracking import check_tracker

    for name, value in (("stage0-steps", stage0_steps), ("stage1-steps", stage1_steps),
                        ("stage2-steps", stage2_steps)):
        positive(name, value, zero_ok=True)
    positive("batch-size", batch_size)
    positive("lr", lr)
    positive("checkpoint-every", checkpoint_every, zero_ok=True)
    schedule = scaled_schedule(bundle, batch_size, exclude_ids or [], stage0_steps, stage1_steps, stage2_steps)
    return FinetuneConfig(model=model, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                          log_with=check_tracker(log_with), exclude_ids=sorted(exclude_ids or []), **schedule)


def finetune_run(*, data: str | Path, out: str | Path, model: str = "tiny-llava", forget_split: str = "forget_10",
                 forget_ids: str | None = None, retain_ids: str | None = None, stage0_steps: int | None = None,
                 stage1_steps: int | None = None, stage2_steps: int | None = None, batch_size: int = BATCH_SIZE,
                 lr: float = LR, seed: int = 0, checkpoint_every: int = CHECKPOINT_EVERY,
                 log_with: str | None = None, eval_after: bool = True, max_records: int = 0,
                 resume: bool = False, overwrite: bool = False) -> dict:
    """`mmunlearn finetune`: the vanilla model (everyone learned; --forget-ids/--forget-split only label who
    the forget people are, so OUT/eval has a forget row to compare an unlearned model with)."""
    params = dict(locals())
    from .train.finetune import finetune

    positive("max-records", max_records, zero_ok=True)
    check_out(out, overwrite=overwrite, resume=resume)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids, need_forget=False)
    cfg = _finetune_config(bundle, model, stage0_steps, stage1_steps, stage2_steps, batch_size, lr, seed,
                           checkpoint_every, log_with)
    _check_base_model(model)
    out = prepare_out(out, overwrite=overwrite, resume=resume)
    run = start_run(out, "finetune", params, asdict(cfg))
    result = finetune(bundle, cfg, out, resume=resume)
    train_log = result["train_log"]
    write_card(out, run, train_log)
    say(f"fine-tuned {train_log['parameters']:,} parameters in {train_log['wall_time_s']:.0f}s on "
        f"{train_log['processes']} process(es) → {out}")
    summary = None
    if eval_after:
        summary = evaluate_after_training(result["loaded"], out, bundle, out / "eval", max_records_per_split=max_records)
        write_card(out, run, train_log, summary)
    return {"out": out, "train_log": train_log, "summary": summary, "loaded": result["loaded"]}


def retain_model_run(*, data: str | Path, out: str | Path, model: str = "tiny-llava", forget_split: str = "forget_10",
                     forget_ids: str | None = None, retain_ids: str | None = None, stage0_steps: int | None = None,
                     stage1_steps: int | None = None, stage2_steps: int | None = None,
                     batch_size: int = BATCH_SIZE, lr: float = LR, seed: int = 0,
                     checkpoint_every: int = CHECKPOINT_EVERY, log_with: str | None = None, eval_after: bool = True,
                     max_records: int = 0, resume: bool = False, overwrite: bool = False) -> dict:
    """`mmunlearn retain-model`: the same fine-tune without the forget people (forget_quality's reference,
    the relearning floor)."""
    params = dict(locals())
    from .train.finetune import finetune

    positive("max-records", max_records, zero_ok=True)
    check_out(out, overwrite=overwrite, resume=resume)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids, need_retain=True)
    cfg = _finetune_config(bundle, model, stage0_steps, stage1_steps, stage2_steps, batch_size, lr, seed,
                           checkpoint_every, log_with, exclude_ids=sorted(bundle.forget_ids))
    _check_base_model(model)
    out = prepare_out(out, overwrite=overwrite, resume=resume)
    run = start_run(out, "retain-model", params, asdict(cfg))
    result = finetune(bundle, cfg, out, resume=resume)
    write_card(out, run, result["train_log"])
    say(f"retain-only model ({len(bundle.forget_ids)} people never seen) → {out}")
    summary = None
    if eval_after:
        summary = evaluate_after_training(result["loaded"], out, bundle, out / "eval", max_records_per_split=max_records)
        write_card(out, run, result["train_log"], summary)
    return {"out": out, "train_log": result["train_log"], "summary": summary, "loaded": result["loaded"]}


def _check_base_model(model: str | Path) -> None:
    """A fine-tune starts from a tiny builder or a loadable HF folder: checked before --out is made."""
    from .models.loader import is_tiny, tiny_names

    if is_tiny(model):
        return
    if str(model).startswith("tiny-"):
        raise ValueError(f"unknown tiny builder {model!r}; choose one of {', '.join(tiny_names())}")
    from .models.base import adapter_for_folder

    adapter_for_folder(model)


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------

def eval_run(*, model: str | Path, data: str | Path, out: str | Path, forget_split: str = "forget_10",
             forget_ids: str | None = None, retain_ids: str | None = None, reference_summary: str | Path | None = None,
             splits: str | Sequence[str] = EVAL_SPLITS, batch_size: int = 64, max_records: int = 0,
             dtype: str = "auto", truth_ratio: str = "geometric", tofu: str | Path | None = None,
             overwrite: bool = False) -> dict:
    """`mmunlearn eval`: MLLMU-Bench / CLEAR metrics per split × modality → OUT/summary.json + details.jsonl."""
    from .eval.evaluator import SPLITS as KNOWN_SPLITS
    from .models.loader import is_tiny, load_model, parse_dtype

    positive("batch-size", batch_size)
    positive("max-records", max_records, zero_ok=True)
    chosen = split_list(splits)
    if not chosen:
        raise ValueError(f"--splits: no split given; choose among {', '.join(KNOWN_SPLITS)}")
    if truth_ratio not in ("geometric", "arithmetic"):
        raise ValueError(f"--truth-ratio must be geometric or arithmetic, got {truth_ratio!r}")
    if reference_summary is not None and not Path(reference_summary).is_file():
        raise ValueError(f"--reference-summary {reference_summary} does not exist")
    torch_dtype = parse_dtype(dtype)
    check_out(out, overwrite=overwrite)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids, tofu=tofu)
    # a split is one the evaluator knows or one this data holds (CLEAR: forget_faces, real_world, ...)
    offered = list(KNOWN_SPLITS) + [s for s in bundle.splits if s not in KNOWN_SPLITS and bundle.eval(s)]
    unknown = [s for s in chosen if s not in offered]
    if unknown:
        raise ValueError(f"--splits: unknown split(s) {', '.join(unknown)}; choose among {', '.join(offered)}")
    if is_tiny(model):
        from .api import load_model as load_any

        loaded = load_any(str(model), bundle)  # an untrained tiny model: a floor to read numbers against
    else:
        loaded = load_model(model, dtype=torch_dtype, device="auto")  # one replica per process
    out = prepare_out(out, overwrite=overwrite)
    return evaluate_into(loaded, bundle, out, splits=chosen, batch_size=batch_size, max_records_per_split=max_records,
                         truth_ratio_mean=truth_ratio,
                         reference_summary=str(reference_summary) if reference_summary else None)


# --------------------------------------------------------------------------------------------
# unlearn
# --------------------------------------------------------------------------------------------

def parse_set_items(items: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE items → {KEY: value}, read as an OmegaConf dotlist (YAML scalars: 0.2 is a float,
    true a bool, text stays text)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ValueError(f"--set expects KEY=VALUE (got {item!r})")
    try:
        return dict(OmegaConf.to_container(OmegaConf.from_dotlist([i.strip() for i in items])))
    except OmegaConfBaseException as exc:
        raise ValueError(f"--set: {str(exc).splitlines()[0]}") from None


def read_run_config(path: str | Path, method: str) -> dict[str, Any]:
    """--config FILE: a tuned.json (`mmunlearn tune`: the settings chosen for --method) or a YAML/JSON file
    with any of lr, steps and set (method options) → {"lr", "steps", "method_args"}."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .tune import TUNED_FORMAT, read_tuned, tuned_settings

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError, OSError) as exc:
        raise ValueError(f"--config {path}: unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a mapping of options")
    if raw.get("format") == TUNED_FORMAT:
        return tuned_settings(read_tuned(path), method)
    unknown = sorted(set(raw) - {"lr", "steps", "set"})
    if unknown:
        raise ValueError(f"--config {path}: unknown key(s) {', '.join(unknown)}; a config holds lr, steps and set")
    return {"lr": raw.get("lr"), "steps": raw.get("steps"), "method_args": dict(raw.get("set") or {})}


def unlearn_run(*, method: str, model: str | Path, data: str | Path, out: str | Path, forget_split: str = "forget_10",
                forget_ids: str | None = None, retain_ids: str | None = None, steps: int | None = None,
                lr: float | None = None, batch_size: int = 8, scope: str | None = None, seed: int = 0,
                reference: str | Path | None = None, reference_summary: str | Path | None = None,
                set_items: Sequence[str] = (), config: str | Path | None = None, lora_r: int = 8,
                lora_alpha: int = 16, checkpoint_every: int = CHECKPOINT_EVERY, dtype: str = "auto",
                mixed_precision: str | None = None, pure_bf16: bool = False, preset: str = "auto",
                grad_accum: int = 1, gradient_checkpointing: bool = False,
                log_with: str | None = None, eval_every: int = 0, max_records: int = 64,
                eval_splits: str | Sequence[str] = ("forget", "retain"), select_by: str | None = None,
                eval_after: bool = True, resume: bool = False, overwrite: bool = False) -> dict:
    """`mmunlearn unlearn`: one method on the forget people → model at OUT, unlearn_log.json, OUT/eval.

    `max_records`: records per split in the periodic evaluations (--eval-every) and in the final one."""
    params = dict(locals())
    from .methods.base import get_method
    from .models.loader import load_model, parse_dtype
    from .train.loop import make_accelerator
    from .train.selection import check_rule_data, parse_rule
    from .train.tracking import check_tracker
    from .train.unlearn import UnlearnConfig, check_launch, check_selection

    method_cls = get_method(method)
    positive("steps", steps)
    positive("lr", lr)
    positive("batch-size", batch_size)
    positive("lora-r", lora_r)
    positive("lora-alpha", lora_alpha)
    positive("checkpoint-every", checkpoint_every, zero_ok=True)
    positive("max-records", max_records, zero_ok=True)
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"--scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    if reference is not None:
        from .models.base import adapter_for_folder

        adapter_for_folder(reference)
    if reference_summary is not None and not Path(reference_summary).is_file():
        raise ValueError(f"--reference-summary {reference_summary} does not exist")
    if select_by is not None:
        parse_rule(select_by)  # a malformed rule fails here, with its own message
    torch_dtype = parse_dtype(dtype)
    from .train.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    accelerator = make_accelerator(mixed_precision, grad_accum)  # an unusable launch config stops here
    check_out(out, overwrite=overwrite, resume=resume)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids, need_retain=method_cls.needs_retain)
    from_file = read_run_config(config, method) if config is not None else {}
    steps = steps if steps is not None else from_file.get("steps")
    lr = lr if lr is not None else from_file.get("lr")
    method_args = {**from_file.get("method_args", {}), **parse_set_items(set_items)}
    cfg = UnlearnConfig(method=method, model=str(model), steps=steps, lr=lr, batch_size=batch_size, scope=scope,
                        seed=seed, checkpoint_every=checkpoint_every, reference=str(reference) if reference else None,
                        lora_r=lora_r, lora_alpha=lora_alpha, mixed_precision=mixed_precision, pure_bf16=pure_bf16,
                        preset=preset, grad_accum=grad_accum,
                        gradient_checkpointing=gradient_checkpointing, method_args=method_args,
                        log_with=check_tracker(log_with), eval_every=eval_every, eval_records=max_records,
                        eval_splits=list(split_list(eval_splits)), select_by=select_by)
    method_cfg = method_cls.make_config(cfg.method_args)
    method_cls.check_data(method_cfg, bundle)
    check_launch(bundle, method_cls, cfg, accelerator.num_processes)
    check_rule_data(check_selection(cfg, method_cls, accelerator.num_processes), bundle, cfg.eval_records, cfg.seed)
    loaded = load_model(model, dtype=torch_dtype)
    from .train.precision import plan as precision_plan
    from .train.presets import resolve_schedule
    from .train.unlearn import fit_batch, forget_records

    precision_plan(mixed_precision, loaded.model, pure_bf16)  # fp16 on a CPU, an unknown value: refused here
    processes = accelerator.num_processes
    schedule = resolve_schedule(method_cls(method_cfg), loaded.model, cfg, forget_records(bundle, method_cls),
                                bundle.train("retain"),
                                fit_batch(bundle, method_cls, batch_size, processes, warn=False) * processes * grad_accum)
    out = prepare_out(out, overwrite=overwrite, resume=resume)
    run = start_run(out, "unlearn", params, {
        **asdict(cfg), "steps": schedule.steps, "lr": schedule.lr, "preset": schedule.preset,
        "scope": scope or method_cls.default_scope, "method_config": asdict(method_cfg)})
    from .train.unlearn import unlearn

    result = unlearn(bundle, cfg, out, loaded=loaded, resume=resume)
    log_ = result.log
    write_card(out, run, log_)
    say(f"{method}: {log_['config']['steps']} steps in {log_['wall_time_s']:.1f}s on {log_['processes']} process(es) "
        f"(global batch {log_['global_batch']}), {log_['trainable_params']:,} trainable parameters "
        f"({100 * log_['trainable_share']:.1f}%) → {out}")
    summary = None
    if eval_after:
        summary = evaluate_after_training(result.loaded, out, bundle, out / "eval",
                                          reference_summary=str(reference_summary) if reference_summary else None)
        write_card(out, run, log_, summary)
    return {"out": out, "log": log_, "summary": summary, "loaded": result.loaded}


# --------------------------------------------------------------------------------------------
# rerun
# --------------------------------------------------------------------------------------------

RUNNERS = {"finetune": finetune_run, "retain-model": retain_model_run, "unlearn": unlearn_run}


def rerun_options(record: dict, source: Path) -> tuple[Any, dict]:
    """The recorded command's runner and its keyword arguments: options an older mmunlearn recorded under
    another name renamed, ones this mmunlearn lacks refused, newer ones at their defaults; the recorded
    inputs must still exist."""
    import inspect

    from .models.loader import is_tiny

    runner = RUNNERS[record["command"]]
    params = inspect.signature(runner).parameters
    options = {RENAMED.get(k, k): v for k, v in record["options"].items() if k not in (*NOT_RECORDED, "out")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"{source}: run.json records option(s) {', '.join(unknown)} that this mmunlearn does not "
                         "have")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n != "out" and n not in options]
    if missing:
        raise ValueError(f"{source}: run.json lacks the required option(s) {', '.join(missing)}")
    for name, value in options.items():
        if value is None or name in ("out",):
            continue
        is_path = name in ("data", "reference", "reference_summary", "config") or (name == "model" and not is_tiny(value))
        is_path = is_path or (name.endswith("_ids") and isinstance(value, str) and os.path.isabs(value))
        if is_path and not Path(value).exists():
            raise ValueError(f"{source}: the run's input --{name.replace('_', '-')} {value} no longer exists")
    return runner, options


def rerun(run: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """`mmunlearn rerun`: repeat a run from its OUT/run.json — the same command, inputs and options — into a
    new folder."""
    from . import __version__
    from .runfolder import RUN_FILE, read_run

    run, out = Path(run), Path(out)
    record = read_run(run)
    if out.resolve() == run.resolve():
        raise ValueError("--out must be a new folder, not the run being repeated")
    runner, options = rerun_options(record, run / RUN_FILE)
    check_out(out, overwrite=overwrite)
    if record.get("mmunlearn_version") != __version__:
        log.warning(f"note: {run} was made by mmunlearn {record.get('mmunlearn_version')}, this is {__version__}; "
                    "results may differ")
    say(f"rerun of {run}: mmunlearn {record['command']} → {out}")
    return runner(**options, out=out, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# attacks: relearn, probe, rank
# --------------------------------------------------------------------------------------------

def _attack_folder(out: str | Path, overwrite: bool, config: dict) -> Path:
    """The attack's folder with its config.json; summary.json comes last (write_results)."""
    from .data.store import atomic_write_json, prepare_out_dir

    out = prepare_out_dir(out, overwrite=overwrite)
    atomic_write_json(out / "config.json", config)
    return out


def parse_ratios(text: str | Sequence[float]) -> tuple[float, ...]:
    if not isinstance(text, str):
        return tuple(float(r) for r in text)
    try:
        ratios = tuple(float(part) for part in text.replace("%", "").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--ratios expects comma-separated percentages such as 5,10,25,50 (got {text!r})") from None
    if not ratios:
        raise ValueError(f"--ratios expects comma-separated percentages such as 5,10,25,50 (got {text!r})")
    return ratios


def relearn_run(*, model: str | Path, data: str | Path, out: str | Path, forget_split: str = "forget_10",
                forget_ids: str | None = None, retain_ids: str | None = None, ratios: str | Sequence[float] = "5,10,25,50",
                steps: int = 30, lr: float = 5e-4, batch_size: int = 8, scope: str = "full", split: str = "phrasing",
                seed: int = 0, floor_model: str | Path | None = None, overwrite: bool = False) -> dict:
    """`mmunlearn attack relearn`: fine-tune copies of the model on r% of the forget QA; how much held-out
    knowledge comes back (AG), and, with `floor_model`, what the same budget teaches a retain-only model."""
    from .eval.attacks.relearn import RelearnConfig, attack_split, relearn_attack
    from .eval.evaluator import write_results
    from .models.base import adapter_for_folder
    from .models.loader import load_model

    cfg = RelearnConfig(ratios=parse_ratios(ratios), steps=steps, lr=lr, batch_size=batch_size, scope=scope,
                        split=split, seed=seed).validate()
    check_out(out, overwrite=overwrite)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids)
    attack_split(bundle, cfg.split, cfg.seed)  # unusable data fails here, before any model is loaded
    if floor_model is not None:
        adapter_for_folder(floor_model)  # fail before the run, not after the target's fine-tunes
    loaded = load_model(model)
    out = _attack_folder(out, overwrite, {"command": "attack relearn", "model": str(model), "data": str(data),
                                          "forget_split": forget_split,
                                          "floor_model": str(floor_model) if floor_model else None, **asdict(cfg)})

    def report(who: str, ratio: float, run: dict) -> None:
        log.info(f"{who} r={ratio:g}%: probe accuracy {run['after']['cls_acc_loglik']:.3f} "
                 f"(recovery {run['recovery']:+.3f}, {run['n_records']} records, {run['wall_time_s']:.1f}s)")

    summary, details = relearn_attack(loaded, bundle, cfg, floor=floor_model, on_ratio=report)
    write_results(out, summary, details)
    floor_txt = ""
    if summary["floor"]:
        floor_txt = " | floor after: " + ", ".join(f"{k}%={v:.3f}" for k, v in summary["floor"]["after"].items())
    log.info(f"relearn: probe accuracy before {summary['before']:.3f}, AG {summary['AG']:+.3f}{floor_txt} "
             f"→ {out / 'summary.json'}")
    return summary


def probe_run(*, model: str | Path, data: str | Path, out: str | Path, forget_split: str = "forget_10",
              forget_ids: str | None = None, retain_ids: str | None = None, batch_size: int = 64, mia_k: float = 0.2,
              overwrite: bool = False) -> dict:
    """`mmunlearn attack probe`: text-only, transformed-photo, paraphrase and prompt-attack probes plus
    membership inference (AUC)."""
    from .eval.attacks.probe import ProbeConfig, run_probe
    from .eval.evaluator import write_results
    from .models.loader import load_model

    positive("batch-size", batch_size)
    if not 0.0 < mia_k <= 1.0:
        raise ValueError(f"--mia-k must be in (0, 1] (got {mia_k})")
    cfg = ProbeConfig(batch_size=batch_size, mia_k=mia_k)
    check_out(out, overwrite=overwrite)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids)
    loaded = load_model(model)
    out = _attack_folder(out, overwrite, {"command": "attack probe", "model": str(model), "data": str(data),
                                          "forget_split": forget_split, **asdict(cfg)})
    summary, details = run_probe(loaded, bundle, cfg)
    write_results(out, summary, details)
    for name, res in summary["probes"].items():
        if res and res.get("leak") is not None:
            log.info(f"{name:20s} leak {res['leak']:.3f} (n={res['n']})")
    mia = summary["mia"]
    if mia:
        fh = mia["forget_vs_holdout"]
        log.info(f"{'MIA forget/holdout':20s} loss AUC {fh['loss_auc']:.3f}, min-k AUC {fh['min_k_auc']:.3f}")
    log.info(f"probe → {out / 'summary.json'}")
    return summary


def rank_run(*, model: str | Path, data: str | Path, out: str | Path, forget_split: str = "forget_10",
             forget_ids: str | None = None, retain_ids: str | None = None, photos: str | None = None,
             question: str | None = None, answer_template: str | None = None, retain_people: int = 10,
             holdout: bool = True, batch_size: int = 1024, overwrite: bool = False) -> dict:
    """`mmunlearn attack rank`: every known name ranked by likelihood after a name question on photos of the
    forget, retain and holdout people (unseen photos where the data has them)."""
    from .eval.attacks.rank import RankConfig, photo_sets, question_and_template, run_rank
    from .eval.evaluator import write_results
    from .models.loader import load_model

    cfg = RankConfig(photos=photos, question=question, answer_template=answer_template, retain_people=retain_people,
                     holdout=holdout, batch_size=batch_size).validate()
    check_out(out, overwrite=overwrite)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids)
    question_and_template(bundle, cfg)  # unusable data (a training phrasing, no photos) fails before loading
    photo_sets(bundle, cfg)
    loaded = load_model(model)
    out = _attack_folder(out, overwrite, {"command": "attack rank", "model": str(model), "data": str(data),
                                          "forget_split": forget_split, **asdict(cfg)})
    summary, details = run_rank(loaded, bundle, cfg)
    write_results(out, summary, details)
    if summary.get("photos_note"):
        log.warning(summary["photos_note"])
    for group, res in summary["groups"].items():
        if res:
            log.info(f"{group:8s} top-1 {res['top1']:.2f}, top-5 {res['top5']:.2f}, MRR {res['mrr']:.3f}, "
                     f"median rank {res['median_rank']:g} of {summary['n_candidates']} ({res['n']} photos)")
    base = summary["forget_names_on_strangers"]
    if base:
        log.info(f"forget names on strangers' photos: median rank {base['median_rank']:g} "
                 f"(10–90 %: {base['rank_p10']:.0f}–{base['rank_p90']:.0f})")
    log.info(f"rank ({summary['timing']['total_s']:.1f}s) → {out / 'summary.json'}")
    return summary


# --------------------------------------------------------------------------------------------
# bench, tune, report
# --------------------------------------------------------------------------------------------

def chosen_methods(methods: str | Sequence[str]) -> list[str]:
    """--methods NAME[,NAME…] or 'all' → registered method names, in the order given."""
    from .methods.base import registry

    known = list(registry())
    chosen = known if methods == "all" else list(split_list(methods))
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; available: {', '.join(known)}")
    return chosen


def parse_seeds(text: str | Sequence[int], flag: str = "--seeds") -> list[int]:
    if not isinstance(text, str):
        return [int(s) for s in text]
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers (got {text!r})") from None
    if not seeds:
        raise ValueError(f"{flag} names no seed (got {text!r})")
    return seeds


def bench_run(*, model: str | Path, data: str | Path, out: str | Path, methods: str | Sequence[str] = "all",
              forget_split: str = "forget_10", forget_ids: str | None = None, retain_ids: str | None = None,
              seeds: str | Sequence[int] = "0", default_seeds: str | Sequence[int] | None = None,
              steps: int | None = None, batch_size: int = 8, max_records: int = 0,
              reference_summary: str | Path | None = None, attacks: bool = False,
              floor_model: str | Path | None = None, relearn_ratios: str | Sequence[float] = "5,10,25,50",
              relearn_steps: int = 20, readme: str | Path | None = None, workers: int = 1,
              tuned: str | Path | None = None, log_with: str | None = None) -> dict:
    """`mmunlearn bench`: every method × seed → unlearn → evaluate (→ attacks) → results.json + table."""
    from .bench import BenchConfig, run_bench
    from .models.base import adapter_for_folder
    from .report.tables import nothing_to_forget, write_bench_table
    from .train.tracking import check_tracker

    chosen = chosen_methods(methods)
    seed_list = parse_seeds(seeds)
    default_seed_list = None if default_seeds is None else parse_seeds(default_seeds, "--default-seeds")
    if default_seed_list is not None and tuned is None:
        raise ValueError("--default-seeds needs --tuned (without --tuned, --seeds is the defaults' seeds)")
    positive("steps", steps)
    positive("batch-size", batch_size)
    positive("max-records", max_records, zero_ok=True)
    positive("workers", workers)
    ratios = parse_ratios(relearn_ratios)
    positive("relearn-steps", relearn_steps)
    if floor_model is not None and not attacks:
        raise ValueError("--floor-model needs --attacks (it is the relearning attack's floor)")
    if reference_summary is not None and not Path(reference_summary).is_file():
        raise ValueError(f"--reference-summary {reference_summary} does not exist")
    if readme is not None and not Path(readme).is_file():
        raise ValueError(f"--readme {readme} does not exist")
    log_with = check_tracker(log_with)
    bundle = load_bundle(data, forget_split, forget_ids, retain_ids)
    adapter_for_folder(model)
    if floor_model is not None:
        adapter_for_folder(floor_model)  # fail before the bench, not after its runs
    tuned_methods: dict[str, dict] = {}
    if tuned is not None:
        from .tune import read_tuned, tuned_settings

        tuned_data = read_tuned(tuned)
        tuned_methods = {m: tuned_settings(tuned_data, m) for m in chosen if m in tuned_data["methods"]}
        if tuned_data.get("config", {}).get("seed") in seed_list:
            raise ValueError(f"--seeds {','.join(map(str, seed_list))} includes the tuning seed "
                             f"{tuned_data['config']['seed']}: report on other seeds")
    cfg = BenchConfig(model=str(model), methods=chosen, seeds=seed_list, steps=steps, batch_size=batch_size,
                      max_records=max_records, reference_summary=str(reference_summary) if reference_summary else None,
                      attacks=attacks, tuned=tuned_methods, tuned_from=str(tuned) if tuned else None,
                      floor_model=str(floor_model) if floor_model else None, workers=workers,
                      default_seeds=default_seed_list, log_with=log_with, relearn_ratios=ratios,
                      relearn_steps=relearn_steps)
    results = run_bench(bundle, cfg, Path(out), progress=log.info)
    log.info(results["table_markdown"])
    warning = nothing_to_forget(next((a for a in results["aggregated"] if a["method"] == "vanilla"), None))
    if warning:
        log.warning(warning)
    log.info(f"results → {Path(out) / 'results.json'}, {Path(out) / 'results.csv'}")
    if readme is not None:
        write_bench_table(Path(readme), "bench", results)
        log.info(f"table written into {readme}")
    return results


def tune_run(*, model: str | Path, data: str | Path, out: str | Path, methods: str | Sequence[str] = "all",
             trials: int = 16, seed: int = 100, max_records: int = 64, workers: int = 1, rule: str | None = None,
             tune_forget_ids: str | None = None, tune_retain_ids: str | None = None, budget: int = 0,
             set_items: Sequence[str] = (), resume: bool = False, overwrite: bool = False) -> dict:
    """`mmunlearn tune`: every method's settings searched with the same trials, the same compute budget
    (`budget` trained samples a trial; 0: tune.default_budget) and one rule on a tuning population no reported
    run uses → OUT/tuned.json; `set_items` (KEY=VALUE): method options every trial uses, not searched. A fresh
    OUT, like every command's; `resume` continues the interrupted tune there (the same settings), `overwrite`
    starts again."""
    from .data.store import parse_ids
    from .models.base import adapter_for_folder
    from .train.selection import parse_rule
    from .tune import DEFAULT_RULE, TuneConfig, check_fixed, previous_tune, run_tune

    chosen = chosen_methods(methods)
    fixed = parse_set_items(set_items)
    check_fixed(chosen, fixed)
    positive("trials", trials)
    positive("workers", workers)
    positive("max-records", max_records, zero_ok=True)
    positive("budget", budget, zero_ok=True)
    if (tune_forget_ids is None) != (tune_retain_ids is None):
        raise ValueError("--tune-forget-ids and --tune-retain-ids go together")
    parse_rule(rule or DEFAULT_RULE, allow_relative=True)  # a typo costs one line, not a tune
    if not Path(data).exists():
        raise ValueError(f"data {data} does not exist")
    adapter_for_folder(model)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    check_out(out, overwrite=overwrite, resume=resume)
    cfg = TuneConfig(model=str(model), methods=chosen, trials=trials, seed=seed, eval_records=max_records,
                     rule=rule or DEFAULT_RULE, workers=workers, budget=budget, fixed=fixed)
    if resume:
        previous_tune(Path(out), cfg)  # other settings: one line now, not after the vanilla evaluation
    result = run_tune(data, cfg, Path(out), parse_ids(tune_forget_ids, "forget"), parse_ids(tune_retain_ids, "retain"),
                      progress=log.info, resume=resume, overwrite=overwrite)
    log.info(f"tuned {len(result['methods'])} method(s) in {result['timing']['total_s']:.0f}s → "
             f"{Path(out) / 'tuned.json'}")
    return result


def _bench_results(path: Path) -> dict:
    """A bench's results.json (or its folder), checked: ValueError (one line) for anything else."""
    import json as _json

    from .report.html import resolve

    if not path.exists():
        raise ValueError(f"{path} does not exist")
    kind, found = resolve(path)
    if kind != "bench":
        raise ValueError(f"{path} is not a bench folder or results.json")
    try:
        data = _json.loads(found.read_text())
    except _json.JSONDecodeError as err:
        raise ValueError(f"{found} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or "table_markdown" not in data:
        raise ValueError(f"{found} is not a bench results file (no table_markdown)")
    return data


def report_run(*, results: str | Path, readme: str | Path | None = None, name: str = "bench",
               out: str | Path | None = None, plot: str | Path | None = None, tuned_only: bool = False,
               bench: str | Path | None = None) -> str:
    """`mmunlearn report`: the table of a bench results.json or a tune's tuned.json (from files only), into a
    README between markers; `out`: one HTML page (bench or run folder); `plot`: a tune's trade-off PNG;
    `bench` (with a tuned.json): a bench run with `--tuned`, and whether the tuned settings hold on its people.
    Returns the table it printed."""
    from .report.html import bench_report, resolve, run_report, write_html
    from .report.tables import markdown_table, nothing_to_forget, tuned_rows, update_readme, write_bench_table

    results = Path(results)
    if not results.exists():
        raise ValueError(f"{results} does not exist")
    if readme is not None and not Path(readme).is_file():
        raise ValueError(f"--readme {readme} does not exist")
    if results.is_file() and results.name.endswith(".json") and '"mmunlearn-tuned/' in results.read_text()[:200]:
        from .report.tuning import carry_over_table, tune_plot, tune_table
        from .tune import read_tuned

        tuned_data = read_tuned(results)
        if out is not None:
            raise ValueError("--out (an HTML page) needs a bench or a run folder; a tune draws its plot with --plot")
        table = tune_table(tuned_data)
        if bench is not None:
            table += "\n\n" + carry_over_table(tuned_data, _bench_results(Path(bench)))
        log.info(table)
        if plot is not None:
            log.info(f"plot → {tune_plot(tuned_data, Path(plot))}")
        if readme is not None:
            update_readme(Path(readme), name, table)
        return table
    if plot is not None:
        raise ValueError("--plot needs a tuned.json (`mmunlearn tune`)")
    if bench is not None:
        raise ValueError("--bench goes with a tuned.json: it checks the tune's choices on the bench's people")
    kind, path = resolve(results)
    if kind == "bench":
        data = _bench_results(path)
        chosen = tuned_rows(data) if tuned_only else data
        table = chosen["table_markdown"]
        log.info(data["table_markdown"])
        warning = nothing_to_forget(next((a for a in data.get("aggregated", []) if a["method"] == "vanilla"), None))
        if warning:
            log.warning(warning)
        page = bench_report(path) if out is not None else None
        if readme is not None:
            write_bench_table(Path(readme), name, chosen)
            log.info(f"table written into {readme}")
    else:
        if readme is not None:
            raise ValueError("--readme needs a bench results.json (a run folder has no bench table)")
        page = run_report(path)
        table = markdown_table(page.table)
        log.info(table)
    if out is not None and page is not None:
        log.info(f"report → {write_html(page, Path(out))}")
    return table
