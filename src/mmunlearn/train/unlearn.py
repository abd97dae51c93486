"""The unlearning engine: one method, one model, one forget/retain problem → a merged HF folder.

Forget drives the run; retain batches are drawn alongside (methods decide whether to use them).
The frozen reference θ0 is built only for methods that need one, before the scope is applied.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.collate import TrainCollator
from ..data.store import DataBundle, atomic_write_json
from ..methods.base import Context, Method, get_method
from ..models.loader import LoadedModel, load_model
from .loop import LoopConfig, make_accelerator, run_loop, seed_everything
from .sampling import RecordSampler
from .scope import LoraSettings, apply_scope, trainable_count


@dataclass
class UnlearnConfig:
    method: str = "graddiff"
    model: str = ""
    steps: int | None = None  # None: the method's default
    lr: float | None = None
    batch_size: int = 8
    scope: str | None = None
    seed: int = 0
    checkpoint_every: int = 0
    reference: str | None = None  # a retain-only model folder (NPO's reference, SPEC 3)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    method_args: dict[str, Any] = field(default_factory=dict)


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


def unlearn(bundle: DataBundle, cfg: UnlearnConfig, out: Path, loaded: LoadedModel | None = None,
            resume: bool = False) -> UnlearnResult:
    method_cls = get_method(cfg.method)
    method: Method = method_cls(method_cls.make_config(cfg.method_args))
    seed_everything(cfg.seed)
    loaded = loaded or load_model(cfg.model)
    forget = [r for r in bundle.train("forget") if r.modality in method.forget_modalities
              and (method.forget_visible or not r.is_visible_fact)]
    retain = bundle.train("retain")
    if not forget:
        raise ValueError(f"no forget training records for {cfg.method} (modalities {method.forget_modalities}) "
                         f"in split {bundle.forget_split!r}")
    if method.needs_retain and not retain:
        raise ValueError(f"{cfg.method} needs retain records but the retain split is empty")

    accelerator = make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    model = loaded.model
    reference = None
    if method.needs_reference:
        reference = load_model(cfg.reference).model if cfg.reference else copy.deepcopy(model)
        reference.eval().requires_grad_(False).to(accelerator.device)
    scope = cfg.scope or method.default_scope
    model = apply_scope(model, loaded.adapter, scope, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    loaded.model = model
    n_train, n_total = trainable_count(model)

    samplers = {"forget": RecordSampler(forget, cfg.batch_size, cfg.seed, rank, world)}
    if retain:
        samplers["retain"] = RecordSampler(retain, cfg.batch_size, cfg.seed + 1, rank, world)
    collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True, seed=cfg.seed + rank)
    rng = random.Random(f"method-{cfg.seed}-{rank}")
    model.to(accelerator.device)
    ctx = Context(model=model, adapter=loaded.adapter, processor=loaded.processor, collate=collate,
                  device=accelerator.device, forget_records=forget, retain_records=retain,
                  next_forget=samplers["forget"].next,
                  next_retain=samplers["retain"].next if retain else (lambda: []),
                  rng=rng, reference=reference, run_dir=out, pretrain_records=bundle.train("pretrain"))
    t_prep = time.perf_counter()
    method.prepare(ctx)
    prep_s = time.perf_counter() - t_prep
    state, restore = _sampler_state_hooks(samplers, rng, collate)
    steps = cfg.steps if cfg.steps is not None else method.default_steps
    lr = cfg.lr if cfg.lr is not None else method.default_lr
    loop_cfg = LoopConfig(steps=steps, lr=lr, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                          desc=f"unlearn:{cfg.method}", log_every=5)

    def loop(step_loss, checkpoint: bool = True, **overrides):
        """One run of the engine's loop on ctx.model (Method.run calls it; multi-stage methods call it
        once per stage, with LoopConfig overrides such as steps= or desc=). None when no steps."""
        stage_cfg = dataclasses.replace(loop_cfg, **overrides)
        if stage_cfg.steps <= 0:
            return None
        return run_loop(ctx.model, step_loss, stage_cfg, accelerator=accelerator, grad_masks=ctx.grad_masks,
                        checkpoint_root=out if checkpoint else None, resume=resume and checkpoint,
                        rng_state=state, set_rng_state=restore, mask_when=method.mask_active)

    result = method.run(ctx, loop)
    model = accelerator.unwrap_model(ctx.model)  # a multi-stage method may have replaced ctx.model
    model.eval()
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    loaded.model = model
    log = {
        "method": cfg.method,
        "config": {**asdict(cfg), "steps": steps, "lr": lr, "scope": scope},
        "method_config": asdict(method.cfg),
        "forget_split": bundle.forget_split,
        "records": {"forget": len(forget), "retain": len(retain)},
        "trainable_params": n_train,
        "total_params": n_total,
        "trainable_share": round(n_train / n_total, 4),
        "prepare_time_s": round(prep_s, 3),
        "wall_time_s": round((result.wall_time_s if result else 0.0) + prep_s, 3),
        "peak_memory_mb": round(result.peak_memory_mb, 1) if result else None,
        "losses": result.log if result else [],
        **{k: v for k, v in ctx.extra_log.items()},
    }
    if accelerator.is_main_process:
        loaded.save(out)
        atomic_write_json(out / "unlearn_log.json", log)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
    return UnlearnResult(loaded, log)


def read_log(out: Path) -> dict:
    return json.loads((Path(out) / "unlearn_log.json").read_text())
