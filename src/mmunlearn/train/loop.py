"""The single training loop (accelerate): fine-tuning and every unlearning method run through it.

What it owns, so methods do not: devices and processes, the optimiser and schedule, gradient masks,
the NaN/inf guard (stop, keep the last good checkpoint), periodic checkpoints and exact resume,
progress bar and per-step log. What it is given: a `step_loss(step) -> dict` callable that draws its
own batches and returns named loss terms with the total under "loss".
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

CHECKPOINT_DIR = "checkpoint"


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


@dataclass
class LoopResult:
    steps_done: int
    wall_time_s: float
    log: list[dict] = field(default_factory=list)
    peak_memory_mb: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator():
    """CPU unless a GPU is present; unused-parameter tolerant DDP (frozen parts, text-only batches)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _lr_lambda(cfg: LoopConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return f


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return 0.0


def run_loop(
    model: torch.nn.Module,
    step_loss: Callable[[int], dict[str, torch.Tensor]],
    cfg: LoopConfig,
    accelerator=None,
    grad_masks: dict[str, torch.Tensor] | None = None,
    checkpoint_root: str | Path | None = None,
    resume: bool = False,
    rng_state: Callable[[], dict] | None = None,
    set_rng_state: Callable[[dict], None] | None = None,
    mask_when: Callable[[int], bool] | None = None,
) -> LoopResult:
    """Run `cfg.steps` optimiser steps of `step_loss` on the trainable parameters of `model`.

    `grad_masks` maps parameter names to 0/1 tensors multiplied into the gradients every step (SalUn,
    MMUnlearner, VKD saliency). With `checkpoint_root`, the trainable state, optimiser, scheduler, the
    step and every RNG are saved every `checkpoint_every` steps, so `resume` continues bit-for-bit.
    """
    accelerator = accelerator or make_accelerator()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    # The model is not wrapped in DDP: methods call the very module they were given (hooks, several
    # forward passes, a frozen teacher), so gradients are averaged across processes explicitly below.
    model.to(accelerator.device)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    masks = {n: m.to(named[n].device, named[n].dtype) for n, m in (grad_masks or {}).items() if n in named}

    ckpt = Path(checkpoint_root) / CHECKPOINT_DIR if checkpoint_root else None
    start, log = 0, []
    if resume and ckpt and (ckpt / "loop_state.json").is_file():
        state = json.loads((ckpt / "loop_state.json").read_text())
        trainable = torch.load(ckpt / "trainable.pt", weights_only=True)
        missing = set(named) - set(trainable)
        if missing:
            raise ValueError(f"checkpoint in {ckpt} does not match the model ({len(missing)} parameters missing)")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in trainable:
                    p.copy_(trainable[n])
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        _set_rng(torch.load(ckpt / "rng.pt", weights_only=False), set_rng_state)
        start, log = state["step"], state["log"]
        accelerator.print(f"resuming {cfg.desc} from step {start}")

    model.train()
    t0 = time.perf_counter()
    elapsed_before = log[-1]["time_s"] if log else 0.0
    bar = tqdm(range(start, cfg.steps), desc=cfg.desc, disable=not accelerator.is_local_main_process,
               initial=start, total=cfg.steps, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        terms = step_loss(step)
        loss = terms["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"{cfg.desc}: loss became {loss.item()} at step {step}; stopped"
                + (f" (last good checkpoint kept in {ckpt})" if ckpt and ckpt.exists() else "")
                + " — lower --lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if accelerator.num_processes > 1:
            _average_gradients(params, accelerator)
        if masks and (mask_when is None or mask_when(step)):
            for n, m in masks.items():
                if named[n].grad is not None:
                    named[n].grad.mul_(m)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, **{k: float(v.detach()) for k, v in terms.items()},
                   "lr": scheduler.get_last_lr()[0], "time_s": round(elapsed_before + time.perf_counter() - t0, 3)}
            log.append(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss",) or k.startswith("nll")})
        done = step + 1
        if ckpt and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save_checkpoint(ckpt, model, optimizer, scheduler, done, log, rng_state)
    bar.close()
    wall = elapsed_before + time.perf_counter() - t0
    return LoopResult(cfg.steps, wall, log, peak_memory_mb())


def _average_gradients(params: list[torch.nn.Parameter], accelerator) -> None:
    """Mean of every gradient over processes, in one collective (missing grads count as zero)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _rng_snapshot(extra: Callable[[], dict] | None) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "extra": extra() if extra else None}


def _set_rng(state: dict, extra: Callable[[dict], None] | None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if extra and state.get("extra") is not None:
        extra(state["extra"])


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, step: int, log: list, rng_state) -> None:
    """Written into a temp folder and swapped in, so a crash mid-save keeps the previous checkpoint."""
    import shutil

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_snapshot(rng_state), tmp / "rng.pt")
    (tmp / "loop_state.json").write_text(json.dumps({"step": step, "log": log}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def config_dict(cfg) -> dict:
    return asdict(cfg)
