"""The single training loop (accelerate): fine-tuning and every unlearning method run through it.

accelerate owns processes, devices, precision and sharding: the model (one `StepModule`, see
models/forward.py) and its optimiser go through `accelerator.prepare` (DDP, FSDP2, DeepSpeed), losses
run under its autocast and `accelerator.backward`, micro-batches under `accelerator.accumulate`. No
collective is written here by hand.

What the loop owns, so methods do not: the optimiser and schedule, gradient masks (applied between the
backward and the step, on sharded gradients too; under DeepSpeed the loop drives the engine's backward
and step itself to put them there, see train/zero.py), the NaN/inf guard (every process stops when any sees
one), periodic checkpoints with exact resume (model, optimiser, scheduler, every process's RNG), the
progress bar and the per-step log. What it is given: a `step_loss(step, module) -> dict` callable that
draws its own batches, calls the prepared `module` once, and returns named loss terms with the total
under "loss".
"""

from __future__ import annotations

import json
import os
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.store import replace_folder
from . import zero

CHECKPOINT_DIR = "checkpoint"
LOCAL_MASKS = "__local_to_this_process__"  # key set in a masks dict once `run_loop` has cut it to its shards
MIXED_PRECISION = ("no", "bf16", "fp16")


class NonFiniteLossError(RuntimeError):
    """Raised when a loss turns NaN/inf: the run stops instead of writing a broken model."""


@dataclass
class LoopConfig:
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | linear
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # 0: no periodic checkpoints
    desc: str = "train"
    track_offset: int = 0  # added to the step in tracker logs (a multi-stage run's stages follow each other)


@dataclass
class LoopResult:
    steps_done: int
    wall_time_s: float
    log: list[dict] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    steps_run: int = 0  # steps this call actually ran (fewer than steps_done after a resume)
    processes: int = 1
    distributed_type: str = "NO"
    peak_memory_mb_per_process: list[float] = field(default_factory=list)  # peak_memory_mb is their maximum


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every device's) from one seed: accelerate's set_seed."""
    from accelerate.utils import set_seed

    set_seed(seed)


def make_accelerator(mixed_precision: str | None = None, grad_accum: int = 1, log_with: str | None = None,
                     logging_dir: str | Path | None = None):
    """The run's Accelerator: GPU when present, else CPU processes over gloo.

    `mixed_precision` None: what the launcher says (`ACCELERATE_MIXED_PRECISION`, exported by `accelerate
    launch --config_file`), else "no" — an explicit value would override the config file's bf16 silently
    (train/precision.py decides it for a loaded model, from the weights' dtype too).

    DDP tolerates unused parameters (frozen parts, text-only batches that skip the vision tower).
    FSDP is switched on the way accelerate's launcher does it (`ACCELERATE_USE_FSDP=true`, from an
    accelerate config file or the environment). accelerate only offers FSDP on accelerators, while
    torch's FSDP2 (`fully_shard`) runs on CPU with gloo; on a multi-process CPU run the state is
    switched to FSDP with the plugin read from the same environment, so the CPU tests exercise the
    very `prepare` path a GPU run takes.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedType

    if mixed_precision is None:
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower() or "no"
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"unknown mixed precision {mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}")
    if grad_accum < 1:
        raise ValueError(f"gradient accumulation must be at least 1 step (got {grad_accum})")
    wants_deepspeed = zero.deepspeed_requested()
    cpu = not torch.cuda.is_available()
    if wants_deepspeed:
        zero.check_available()
        if cpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
            # the CPU switch below builds the plugin itself; accelerate would refuse DeepSpeed with cpu=True
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
    # One run per Accelerator: a second run in the same process (tests, bench) may ask for other settings.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    partial = PartialState(cpu=cpu)
    if cpu and partial.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):  # an earlier run's switch
        partial.distributed_type = DistributedType.MULTI_CPU
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                              step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              # trackers (train/tracking.py): none unless --log-with
                              log_with=log_with, project_dir=str(logging_dir) if logging_dir else None)
    if wants_deepspeed and cpu:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        if accelerator.distributed_type == DistributedType.MULTI_CPU:
            zero.switch_cpu_state(accelerator, partial, mixed_precision)
    if wants_deepspeed:
        if accelerator.distributed_type != DistributedType.DEEPSPEED:
            raise ValueError("DeepSpeed needs a multi-process launch (accelerate launch with a ZeRO config "
                             "from configs/accelerate/, or torchrun)")
        zero.check_stage(accelerator)
        zero.keep_models_whole()
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if cpu and wants_fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        from accelerate import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU needs FSDP2 (set fsdp_version: 2 in the accelerate config, "
                             "or FSDP_VERSION=2)")
        # both shared states: accelerate copies PartialState's type into AcceleratorState whenever one
        # is constructed again (its own helpers do), which would quietly turn FSDP back into DDP
        partial.distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


# our schedule names → transformers' (its warmup is step/W: the first step runs at lr 0, as in HF Trainer)
SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine_with_min_lr", "linear": "linear"}
COSINE_MIN_LR_RATE = 0.05  # cosine ends at 5 % of the peak lr, not 0: the last steps still learn


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: LoopConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers.get_scheduler for `cfg.schedule` with `cfg.warmup_steps` over `cfg.steps`."""
    from transformers import get_scheduler

    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: choose {', '.join(SCHEDULES)}")
    extra = {"min_lr_rate": COSINE_MIN_LR_RATE} if cfg.schedule == "cosine" else None
    return get_scheduler(SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=max(1, cfg.steps), scheduler_specific_kwargs=extra)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return 0.0


def _sharded_like(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A bool mask (1 byte per weight, `grad.mul_` takes it as 0/1) laid out like `param`: when FSDP made
    the parameter a DTensor, this process's shard, cut from its own full mask with no communication
    (every process holds the same masks: methods/masks.py `agree_across_processes`) and copied, so it
    does not keep the full mask alive."""
    mask = mask.to(param.device, torch.bool)
    if type(param).__name__ == "DTensor":
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(mask, param.device_mesh, param.placements, src_data_rank=None).clone()
    return mask


def _token_count_reducer(accelerator) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Mean over processes of a per-process token count (methods/losses.py `global_token_mean`)."""
    if accelerator.num_processes == 1:
        return None
    return lambda n: accelerator.reduce(n.reshape(1).to(accelerator.device), reduction="mean")[0]


def run_loop(
    module: torch.nn.Module,
    step_loss: Callable[[int, torch.nn.Module], dict[str, torch.Tensor]],
    cfg: LoopConfig,
    accelerator=None,
    grad_masks: dict[str, torch.Tensor] | None = None,
    checkpoint_root: str | Path | None = None,
    resume: bool = False,
    rng_state: Callable[[], dict] | None = None,
    set_rng_state: Callable[[dict], None] | None = None,
    mask_when: Callable[[int], bool] | None = None,
    on_step_end: Callable[[int], bool] | None = None,
) -> LoopResult:
    """Run `cfg.steps` optimiser steps of `step_loss` on the trainable parameters of `module`
    (an `StepModule`; `step_loss` receives it prepared: DDP- or FSDP-wrapped on several processes).

    `grad_masks` maps parameter names of `module.model` to 0/1 tensors multiplied into the gradients
    every step (SalUn, MMUnlearner, VKD saliency). With `checkpoint_root`, the trainable weights,
    optimiser, scheduler, the step and every process's RNG are saved every `checkpoint_every` steps,
    so `resume` continues bit-for-bit. `on_step_end(done)` runs after every optimiser step (the engine's
    periodic evaluation); it returns True when it put the model in eval mode, and must leave the RNG
    streams as it found them so training is the same with or without it.
    """
    from ..methods.losses import global_token_mean

    accelerator = accelerator or make_accelerator()
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError("nothing to train: no parameter requires grad")
    module.to(accelerator.device)
    if accelerator.is_fsdp2 or zero.is_deepspeed(accelerator):
        module.uniform_parts = True  # every process gathers/reduces the same layers (models/forward.py)
        module.blank_in_place = zero.is_deepspeed(accelerator)  # and in the same order
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    deepspeed = zero.is_deepspeed(accelerator)
    if deepspeed:
        zero.configure_engine(accelerator, cfg.grad_clip)
    prepared, prepared_optimizer = accelerator.prepare(module, optimizer)
    # DeepSpeed: the loop drives the engine (backward, masks, step), see train/zero.py
    engine = accelerator.deepspeed_engine_wrapped.engine if deepspeed else None
    inner = accelerator.unwrap_model(prepared)
    params = [p for p in prepared.parameters() if p.requires_grad]  # FSDP2 replaced them with DTensors
    named = {n: p for n, p in inner.model.named_parameters() if p.requires_grad}
    masks = {n: m for n, m in (grad_masks or {}).items() if n in named}
    if grad_masks and grad_masks.get(LOCAL_MASKS):  # an earlier stage already cut them to this process
        pass
    elif engine is not None:  # each process keeps only its partition's part of each mask
        masks = zero.local_masks(named, masks)
    else:
        masks = {n: _sharded_like(m, named[n]) for n, m in masks.items()}
    if grad_masks and (engine is not None or accelerator.is_fsdp2) and not grad_masks.get(LOCAL_MASKS):
        # the caller's full masks (1 byte per weight of the whole model, on every process) are replaced by
        # this process's parts: sharded like their parameters, nothing model-sized is kept for the run
        grad_masks.clear()
        grad_masks.update(masks)
        grad_masks[LOCAL_MASKS] = True

    rank, world = accelerator.process_index, accelerator.num_processes
    ckpt = Path(checkpoint_root) / CHECKPOINT_DIR if checkpoint_root else None
    start, log = 0, []
    if resume and ckpt and (ckpt / "loop_state.json").is_file():
        start, log = _load_checkpoint(ckpt, inner, optimizer, scheduler, rank, world, set_rng_state, engine)
        if accelerator.is_main_process:
            logging.getLogger("mmunlearn").info(f"resuming {cfg.desc} from step {start}")

    prepared.train()
    t0 = time.perf_counter()
    elapsed_before = log[-1]["time_s"] if log else 0.0
    accum = accelerator.gradient_accumulation_steps
    bar = tqdm(range(start, cfg.steps), desc=cfg.desc, disable=not accelerator.is_local_main_process,
               initial=start, total=cfg.steps, dynamic_ncols=True, mininterval=1.0)
    with global_token_mean(_token_count_reducer(accelerator)):
        for step in bar:
            sums: dict[str, float] = {}
            for _ in range(accum):
                with accelerator.accumulate(prepared):
                    terms = step_loss(step, prepared)
                    loss = terms["loss"]
                    _stop_on_non_finite(accelerator, loss, cfg.desc, step, ckpt)
                    mask_now = bool(grad_masks) and (mask_when is None or mask_when(step))
                    if engine is not None:
                        _deepspeed_backward_and_step(engine, accelerator.sync_gradients, loss,
                                                     named, masks if mask_now else {}, scheduler)
                    else:
                        accelerator.backward(loss)
                    if engine is None and accelerator.sync_gradients:
                        if mask_now:
                            for n, m in masks.items():
                                if named[n].grad is not None:
                                    named[n].grad.mul_(m)
                        if cfg.grad_clip:
                            accelerator.clip_grad_norm_(params, cfg.grad_clip)
                        prepared_optimizer.step()
                        scheduler.step()
                        prepared_optimizer.zero_grad(set_to_none=True)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            if world > 1:  # the step's terms as the whole global batch saw them, not rank 0's share
                sums = _mean_over_processes(accelerator, sums)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                row = {"step": step, **sums, "lr": scheduler.get_last_lr()[0],
                       "time_s": round(elapsed_before + time.perf_counter() - t0, 3)}
                log.append(row)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss",) or k.startswith("nll")})
            # every step to the trackers (a no-op without --log-with): the same terms as the log rows
            accelerator.log({f"train/{k}": v for k, v in {**sums, "lr": scheduler.get_last_lr()[0]}.items()},
                            step=cfg.track_offset + step)
            done = step + 1
            if on_step_end is not None and on_step_end(done):
                prepared.train()  # the hook evaluated (eval mode); it leaves the RNG as it found it
            if ckpt and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _save_checkpoint(accelerator, ckpt, inner, optimizer, scheduler, done, log, rng_state, engine)
    bar.close()
    wall = elapsed_before + time.perf_counter() - t0
    accelerator.free_memory()  # drop accelerate's references to this loop's wrapper (a later stage re-wraps)
    per_process = _per_process_peaks(accelerator, peak_memory_mb())
    return LoopResult(cfg.steps, wall, log, max(per_process), steps_run=cfg.steps - start, processes=world,
                      distributed_type=str(accelerator.distributed_type).split(".")[-1],
                      peak_memory_mb_per_process=per_process)


def _mean_over_processes(accelerator, terms: dict[str, float]) -> dict[str, float]:
    """Each logged term averaged over processes (one all-reduce of a small vector, keys in a fixed order:
    every process's step returns the same terms). Each process's term is the mean over its share of the
    global batch, so the mean over processes is the global batch's value."""
    keys = sorted(terms)
    values = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    reduced = accelerator.reduce(values, reduction="mean")
    return {k: float(v) for k, v in zip(keys, reduced.tolist())}


def _per_process_peaks(accelerator, mine: float) -> list[float]:
    """Every process's peak memory (MB), in process order: the log keeps them all and their maximum."""
    if accelerator.num_processes == 1:
        return [round(mine, 1)]
    gathered = accelerator.gather(torch.tensor([mine], dtype=torch.float64, device=accelerator.device))
    return [round(float(v), 1) for v in gathered.tolist()]


def _deepspeed_backward_and_step(engine, boundary: bool, loss: torch.Tensor, named: dict, masks: dict,
                                 scheduler) -> None:
    """accelerate's DeepSpeed backward also steps; here the masks go between: the engine's backward
    (it divides by the accumulation steps and, at the boundary, reduces into each process's partition),
    the masks on those partitions, then the engine's step (clip, optimiser, zero the gradients)."""
    engine.set_gradient_accumulation_boundary(is_boundary=boundary)
    engine.backward(loss)
    if boundary:
        if masks:
            zero.mask_partitioned_grads(named, masks)
        engine.step()
        scheduler.step()


def _stop_on_non_finite(accelerator, loss: torch.Tensor, desc: str, step: int, ckpt: Path | None) -> None:
    """Every process learns whether any process's loss is NaN/inf, and all stop together (a process
    that stopped alone would leave the others waiting in the next gradient all-reduce)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=accelerator.device)
    flags = accelerator.gather(bad) if accelerator.num_processes > 1 else bad
    if flags.sum() > 0:
        where = "" if accelerator.num_processes == 1 else \
            f" on process {', '.join(str(i) for i in flags.nonzero().flatten().tolist())}"
        raise NonFiniteLossError(
            f"{desc}: loss became {'non-finite' if where else loss.item()} at step {step}{where}; stopped"
            + (f" (last good checkpoint kept in {ckpt})" if ckpt and ckpt.exists() else "")
            + " — lower --lr or check the data"
        )


def _rng_snapshot(extra: Callable[[], dict] | None) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "extra": extra() if extra else None}


def _set_rng(state: dict, extra: Callable[[dict], None] | None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if extra and state.get("extra") is not None:
        extra(state["extra"])


def _sharded_state(inner: torch.nn.Module, optimizer) -> dict:
    """The trainable weights and the optimiser state as each process holds them (DTensor shards under
    FSDP2, whole tensors otherwise), keyed by parameter name: torch.distributed.checkpoint writes each
    process's shards itself and stores a replicated tensor once, so no process gathers the model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(inner, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": model_sd, "optimizer": optim_sd}


def _save_checkpoint(accelerator, ckpt: Path, inner, optimizer, scheduler, step: int, log: list, rng_state,
                     engine=None) -> None:
    """Written into a temp folder and swapped in, so a crash mid-save keeps the previous checkpoint.

    Weights and optimiser state are written sharded, by every process: torch.distributed.checkpoint (plain,
    DDP, FSDP2) or the DeepSpeed engine's own partitioned checkpoint. A full-scope 7B checkpoint (weights
    + AdamW state, ~84 GB) is then 1/N per process, never gathered onto one. Every process writes its own
    RNG file; the main process the scheduler and the loop's state."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if engine is not None:
        engine.save_checkpoint(str(tmp), tag="state", exclude_frozen_parameters=True)
        kind = "deepspeed"
    else:
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(inner, optimizer), checkpoint_id=str(tmp / "state"))
        kind = "dcp"
    torch.save(_rng_snapshot(rng_state), tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "loop_state.json").write_text(json.dumps({"step": step, "log": log, "format": kind,
                                                         "processes": accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(tmp, ckpt)
    accelerator.wait_for_everyone()


def _load_checkpoint(ckpt: Path, inner, optimizer, scheduler, rank: int, world: int,
                     set_rng_state, engine=None) -> tuple[int, list]:
    """Each process reads back its own shards (and its own RNG file) into the prepared model and optimiser."""
    state = json.loads((ckpt / "loop_state.json").read_text())
    written_by = state.get("processes", 1)
    if written_by != world:
        raise ValueError(f"checkpoint in {ckpt} was written by {written_by} process(es); resume it with "
                         f"{written_by}, not {world}")
    kind = state.get("format")
    if kind not in ("dcp", "deepspeed"):
        raise ValueError(f"checkpoint in {ckpt} was written by an older mmunlearn (gathered weights); "
                         "start the run again without --resume")
    if (kind == "deepspeed") != (engine is not None):
        raise ValueError(f"checkpoint in {ckpt} was written {'under' if kind == 'deepspeed' else 'without'} "
                         "DeepSpeed; resume it with the same launch configuration")
    if engine is not None:
        path, _ = engine.load_checkpoint(str(ckpt), tag="state", load_module_strict=False,
                                         load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"checkpoint in {ckpt} holds no DeepSpeed state")
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

        current = _sharded_state(inner, optimizer)  # the layout to read into (this process's shards)
        saved = FileSystemReader(str(ckpt / "state")).read_metadata().state_dict_metadata
        missing = [k for k in current["model"] if f"model.{k}" not in saved]
        if missing:  # a scope, method or model other than the checkpoint's
            raise ValueError(f"checkpoint in {ckpt} does not match this run's trainable parameters "
                             f"({len(missing)} missing, e.g. {missing[0]})")
        # partial: a parameter that had no gradient before the checkpoint had no AdamW state to save; the
        # state the fresh optimiser was given to read into is dropped again, so it starts as in a straight run
        dcp.load(current, checkpoint_id=str(ckpt / "state"), planner=DefaultLoadPlanner(allow_partial_load=True))
        set_state_dict(inner, optimizer, model_state_dict=current["model"], optim_state_dict=current["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True))
        stateless = {k for k in current["model"] if f"optimizer.state.{k}.step" not in saved}
        for name, param in inner.named_parameters():
            if name in stateless:
                optimizer.state.pop(param, None)
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    _set_rng(torch.load(ckpt / f"rng_{rank}.pt", weights_only=False), set_rng_state)
    return state["step"], state["log"]


def config_dict(cfg) -> dict:
    return asdict(cfg)
