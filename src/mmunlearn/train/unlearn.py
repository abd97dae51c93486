"""The unlearning engine: one method, one model, one forget/retain problem → a merged HF folder.

Forget drives the run; retain batches are drawn alongside (methods decide whether to use them).
The order matters at scale: load, scope (LoRA adapters are created here), θ0 in its cheapest exact
form (models/reference.py), saliency masks from the same data on every process, then the loop, which
hands the model to accelerate. Only the main process writes files; the log records the process count,
the global batch and which θ0 was used.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.collate import TrainCollator
from ..data.store import DataBundle, atomic_write_json
from ..data.strangers import stranger_photos
from ..methods.base import Context, Method, get_method
from ..models.forward import StepModule
from ..models.loader import LoadedModel, load_model
from ..models.reference import build_reference, parameter_count
from .loop import LoopConfig, make_accelerator, run_loop, seed_everything
from .precision import apply as apply_precision, plan as precision_plan
from .presets import resolve_schedule
from . import zero
from .sampling import RecordSampler
from .saving import save_run_model
from .scope import LoraSettings, apply_scope, trainable_count
from .selection import PeriodicEval, Rule, check_eval_splits, parse_rule
from .tracking import check_tracker, start_tracking, stop_tracking, tracker_kwargs


@dataclass
class UnlearnConfig:
    method: str = "graddiff"
    model: str = ""
    steps: int | None = None  # None: the method's default
    lr: float | None = None
    batch_size: int = 8  # per process; the global batch is batch_size × processes × grad_accum
    scope: str | None = None
    seed: int = 0
    checkpoint_every: int = 0
    reference: str | None = None  # a retain-only model folder (NPO's reference, SPEC 3)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    mixed_precision: str | None = None  # no | bf16 | fp16; None: the launcher's, else the weights' (train/precision.py)
    pure_bf16: bool = False  # keep bf16 trainable weights (no fp32 master copy): the user's explicit choice
    preset: str = "auto"  # lr/steps defaults: auto (by model size) | tiny | real (train/presets.py)
    grad_accum: int = 1  # micro-batches per optimiser step
    gradient_checkpointing: bool = False
    method_args: dict[str, Any] = field(default_factory=dict)
    log_with: str | None = None  # tensorboard | trackio: losses, lr and evaluations (train/tracking.py)
    eval_every: int = 0  # evaluate every N steps and after the last (train/selection.py); 0: never
    eval_records: int = 64  # per split, a seeded subsample (0: all)
    eval_splits: list[str] = field(default_factory=lambda: ["forget", "retain"])  # + the rule's splits
    select_by: str | None = None  # which evaluated step to keep (train/selection.py); None: the last


@dataclass
class UnlearnResult:
    loaded: LoadedModel
    log: dict


def _sampler_state_hooks(samplers: dict[str, RecordSampler], rng: random.Random, collate: TrainCollator):
    def state() -> dict:
        return {"samplers": {k: s.state() for k, s in samplers.items()}, "rng": rng.getstate(),
                "collate": (collate._rng.getstate(), collate._nprng.bit_generator.state)}

    def restore(st: dict) -> None:
        for k, s in samplers.items():
            s.load_state(st["samplers"][k])
        r = st["rng"]
        rng.setstate((r[0], tuple(r[1]), r[2]))
        c = st["collate"][0]
        collate._rng.setstate((c[0], tuple(c[1]), c[2]))
        collate._nprng.bit_generator.state = st["collate"][1]

    return state, restore


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant: works with frozen inputs, so LoRA
    and the vision scope need no `enable_input_require_grads`)."""
    from ..models.forward import base_model

    base = base_model(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False


def forget_records(bundle: DataBundle, method: type[Method] | Method) -> list:
    """The forget records a method trains on (its modalities; visible-feature questions if it forgets them)."""
    return [r for r in bundle.train("forget") if r.modality in method.forget_modalities
            and (method.forget_visible or not r.is_visible_fact)]


def fit_batch(bundle: DataBundle, method: type[Method] | Method, batch_size: int, processes: int,
              warn: bool = True) -> int:
    """The per-process batch, cut to what the forget records fill in one global batch (own data may hold a
    handful of records: a batch of 8 on 4 would repeat records within a step); a warning says so."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {batch_size})")
    n = len(forget_records(bundle, method))
    if not n:
        return batch_size
    if n < processes:
        raise ValueError(f"the forget split has {n} training record(s) for {method.name}, fewer than the "
                         f"{processes} processes: use fewer processes")
    fitted = min(batch_size, n // processes)
    if fitted < batch_size and warn:
        import logging

        logging.getLogger("mmunlearn").warning(
            f"batch size {batch_size} is more than the {n} forget records fill on {processes} process(es) "
            f"for {method.name}: using {fitted}")
    return fitted


def check_launch(bundle: DataBundle, method: type[Method] | Method, cfg: UnlearnConfig, processes: int) -> None:
    """Refuse, before anything is written, a run whose global batch the forget set cannot fill at all."""
    fit_batch(bundle, method, cfg.batch_size, processes, warn=False)


def check_selection(cfg: UnlearnConfig, method: type[Method] | Method, processes: int) -> Rule | None:
    """Refuse, before training, evaluation options the run cannot honour; the parsed --select-by rule."""
    if cfg.select_by and not cfg.eval_every:
        raise ValueError("--select-by needs --eval-every N (the steps it chooses among)")
    if not cfg.eval_every:
        return None
    if cfg.eval_every < 1:
        raise ValueError(f"--eval-every must be at least 1 (got {cfg.eval_every})")
    if cfg.eval_records < 0:
        raise ValueError(f"--eval-records must be 0 (all) or more (got {cfg.eval_records})")
    if processes > 1:
        raise ValueError("--eval-every runs on one process only for now (the kept weights are an unsharded "
                         "in-memory copy); evaluate the saved model with `mmunlearn eval` instead")
    if (method if isinstance(method, type) else type(method)).run is not Method.run:
        raise ValueError(f"--eval-every needs a single-stage method; {method.name} trains in several stages")
    check_eval_splits(cfg.eval_splits)
    return parse_rule(cfg.select_by) if cfg.select_by else None


def unlearn(bundle: DataBundle, cfg: UnlearnConfig, out: Path, loaded: LoadedModel | None = None,
            resume: bool = False) -> UnlearnResult:
    method_cls = get_method(cfg.method)
    method: Method = method_cls(method_cls.make_config(cfg.method_args))
    method_cls.check_data(method.cfg, bundle)  # the CLI checked before --out; bench, tune and the API here
    seed_everything(cfg.seed)
    loaded = loaded or load_model(cfg.model)
    precision = precision_plan(cfg.mixed_precision, loaded.model, cfg.pure_bf16)
    accelerator = make_accelerator(precision.autocast, cfg.grad_accum,
                                   **tracker_kwargs(check_tracker(cfg.log_with), out))
    rank, world = accelerator.process_index, accelerator.num_processes
    forget = forget_records(bundle, method)
    retain = bundle.train("retain")
    if not forget:
        raise ValueError(f"no forget training records for {cfg.method} (modalities {method.forget_modalities}) "
                         f"in split {bundle.forget_split!r}")
    if method.needs_retain and not retain:
        raise ValueError(f"{cfg.method} needs retain records but the retain split is empty")
    batch_size = fit_batch(bundle, method, cfg.batch_size, world)
    rule = check_selection(cfg, method, world)
    if resume and cfg.eval_every and (Path(out) / "checkpoint" / "loop_state.json").is_file():
        raise ValueError("--resume cannot continue an --eval-every run: the evaluations and kept weights "
                         "live in memory, not in the checkpoint; start the run again")

    model = loaded.model
    scope = cfg.scope or method.default_scope
    if scope == "lora" and zero.is_deepspeed(accelerator) and zero.zero_stage(accelerator) == 3:
        raise ValueError("the lora scope is not supported under DeepSpeed ZeRO-3 yet (θ0 is the model with its "
                         "adapters off, and merging needs whole weights): use ZeRO-2 or DDP")
    if scope == "lora" and accelerator.is_fsdp2:
        raise ValueError("the lora scope is not supported under FSDP yet: LoRA trains few weights, run it "
                         "with DDP (one full copy of the base model per process)")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    loaded_reference = load_model(cfg.reference).model if cfg.reference and method.needs_reference else None
    # Adapters exist before anything is wrapped (DDP/FSDP register parameters when they wrap).
    model = apply_scope(model, loaded.adapter, scope, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    loaded.model = model
    n_train, n_total = trainable_count(model)
    model.to(accelerator.device)
    module = StepModule(model, loaded.adapter, loaded.processor)
    reference = build_reference(method.reference_kind(), model, loaded.adapter, module, accelerator,
                                loaded_reference)
    # after θ0 is copied (in the loaded dtype) and before the optimiser exists: fp32 master weights
    upcast = apply_precision(model, precision, deepspeed_half=zero.is_deepspeed(accelerator)
                             and precision.autocast != "no")

    samplers = {"forget": RecordSampler(forget, batch_size, cfg.seed, rank, world)}
    if retain:
        samplers["retain"] = RecordSampler(retain, batch_size, cfg.seed + 1, rank, world)
    collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True, seed=cfg.seed)
    # One stream on every process (its seed string is the one single-process runs always used).
    rng = random.Random(f"method-{cfg.seed}-0")
    ctx = Context(model=model, adapter=loaded.adapter, processor=loaded.processor, collate=collate,
                  device=accelerator.device, forget_records=forget, retain_records=retain,
                  next_forget=samplers["forget"].next,
                  next_retain=samplers["retain"].next if retain else (lambda: []),
                  rng=rng, reference=reference, run_dir=out, pretrain_records=bundle.train("pretrain"),
                  forget_visible_records=[r for r in bundle.train("forget") if r.is_visible_fact],
                  rank=rank, world=world, module=module, autocast=accelerator.autocast,
                  estimate_rows=batch_size, strangers=lambda n: stranger_photos(bundle, n, cfg.seed))
    t_prep = time.perf_counter()
    method.prepare(ctx)  # masks from the same global batches on every process: identical everywhere
    prep_s = time.perf_counter() - t_prep
    state, restore = _sampler_state_hooks(samplers, rng, collate)
    schedule = resolve_schedule(method, loaded.model, cfg, forget, retain, global_batch=batch_size * world * cfg.grad_accum)
    steps, lr = schedule.steps, schedule.lr
    loop_cfg = LoopConfig(steps=steps, lr=lr, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                          desc=f"unlearn:{cfg.method}", log_every=5)
    periodic = PeriodicEval(bundle, loaded, cfg.eval_every, cfg.eval_records, cfg.eval_splits, rule, steps,
                            seed=cfg.seed, accelerator=accelerator) if cfg.eval_every else None
    tracking = start_tracking(accelerator, "unlearn", {**asdict(cfg), "steps": steps, "lr": lr, "scope": scope})
    stages_done = [0]  # steps of earlier stages: tracker steps keep increasing across a multi-stage method

    def loop(step_loss, checkpoint: bool = True, **overrides):
        """One run of the engine's loop on ctx.model (Method.run calls it; multi-stage methods call it
        once per stage, with LoopConfig overrides such as steps= or desc=). None when no steps."""
        stage_cfg = dataclasses.replace(loop_cfg, **{"track_offset": stages_done[0], **overrides})
        if stage_cfg.steps <= 0:
            return None
        if ctx.module.model is not ctx.model:
            ctx.module = StepModule(ctx.model, loaded.adapter, loaded.processor)

        def bound(step, prepared):
            ctx.step_module = prepared
            return step_loss(step)

        try:
            return run_loop(ctx.module, bound, stage_cfg, accelerator=accelerator, grad_masks=ctx.grad_masks,
                            checkpoint_root=out if checkpoint else None, resume=resume and checkpoint,
                            rng_state=state, set_rng_state=restore, mask_when=method.mask_active,
                            on_step_end=(lambda done: periodic(ctx.model, done)) if periodic else None)
        finally:
            ctx.step_module = None
            stages_done[0] += stage_cfg.steps

    try:
        result = method.run(ctx, loop)
    finally:
        stop_tracking(accelerator)
    selection = periodic.finish(ctx.model) if periodic else None  # the kept weights, before saving
    model = ctx.model  # a multi-stage method may have replaced it
    model.eval()
    log = {
        "method": cfg.method,
        "config": {**asdict(cfg), "steps": steps, "lr": lr, "scope": scope},
        "method_config": asdict(method.cfg),
        "forget_split": bundle.forget_split,
        "records": {"forget": len(forget), "retain": len(retain)},
        "processes": world,
        "distributed_type": result.distributed_type if result else str(accelerator.distributed_type).split(".")[-1],
        "batch_size": batch_size,  # per process, after fitting it to the forget records (fit_batch)
        "global_batch": batch_size * world * cfg.grad_accum,
        "mixed_precision": precision.autocast,
        "precision": precision.as_log(),
        "preset": schedule.as_log(),
        "reference": reference.kind if reference is not None else None,
        "reference_params": parameter_count(reference),
        "trainable_params": n_train,
        "total_params": n_total,
        "trainable_share": round(n_train / n_total, 4),
        "prepare_time_s": round(prep_s, 3),
        "wall_time_s": round((result.wall_time_s if result else 0.0) + prep_s, 3),
        "steps_run": result.steps_run if result else 0,
        "peak_memory_mb": round(result.peak_memory_mb, 1) if result else None,  # the maximum over processes
        "peak_memory_mb_per_process": result.peak_memory_mb_per_process if result else None,
        "losses": result.log if result else [],
        **{k: v for k, v in ctx.extra_log.items()},
        **({"tracking": tracking} if tracking else {}),
        **({"selection": selection, "evaluations": periodic.evaluations} if periodic else {}),
    }
    loaded.model = save_run_model(accelerator, model, loaded, out, base=cfg.model or None, restore_dtypes=upcast)
    if accelerator.is_main_process:
        atomic_write_json(out / "unlearn_log.json", log)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
    return UnlearnResult(loaded, log)


def read_log(out: Path) -> dict:
    return json.loads((Path(out) / "unlearn_log.json").read_text())
