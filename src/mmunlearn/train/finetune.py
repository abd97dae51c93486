"""Vanilla fine-tune: the model must genuinely memorise the world before anything can be forgotten.

Stage 1 teaches the "real" population (MLLMU-Bench's celebrities, known before the fictitious
fine-tune); stage 2 teaches every fictitious profile (forget and retain alike, as MLLMU-Bench does)
while replaying a share of stage-1 batches so the earlier knowledge is kept.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.collate import TrainCollator
from ..data.record import Record
from ..data.store import DataBundle, atomic_write_json
from ..models.base import TinySize
from ..models.loader import LoadedModel, build_tiny, is_tiny, load_model
from .loop import LoopConfig, make_accelerator, run_loop, seed_everything
from .sampling import RecordSampler


@dataclass
class FinetuneConfig:
    model: str = "tiny-llava"
    stage1_steps: int = 800
    stage2_steps: int = 9200
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    replay: float = 0.15  # share of stage-2 batches drawn from stage-1 records
    seed: int = 0
    checkpoint_every: int = 500
    tiny: TinySize = field(default_factory=TinySize)
    exclude_ids: list[str] = field(default_factory=list)  # retain-only reference: never see these people
    vision_warmup_steps: int = 1000  # stage 0, tiny models only (a loaded checkpoint already sees)


def world_corpus(bundle: DataBundle):
    from ..data.portraits import BACKGROUND
    from ..data.world import ATTRIBUTE_VALUES

    for recs in bundle.splits.values():
        for r in recs:
            yield r.question
            yield r.answer
            yield from r.options
            if r.paraphrased_answer:
                yield r.paraphrased_answer
    for values in ATTRIBUTE_VALUES.values():
        yield " ".join(values)
    # Stage 0's captions, so the tokenizer has whole words for what it describes.
    from .vision_warmup import DESCRIBE_QUESTION, describe, random_look

    rng = random.Random("corpus")
    backgrounds = sorted(BACKGROUND)
    for _ in range(200):
        yield DESCRIBE_QUESTION
        yield describe(random_look(rng), rng.choice(backgrounds))


def prepare_model(spec: str, bundle: DataBundle, seed: int, tiny: TinySize) -> LoadedModel:
    if is_tiny(spec):
        return build_tiny(spec, world_corpus(bundle), size=tiny, seed=seed)
    return load_model(spec)


def finetune(bundle: DataBundle, cfg: FinetuneConfig, out: Path, resume: bool = False) -> dict:
    seed_everything(cfg.seed)
    loaded = prepare_model(cfg.model, bundle, cfg.seed, cfg.tiny)
    warmup_log = None
    if is_tiny(cfg.model) and cfg.vision_warmup_steps and not resume_point(out, resume):
        from .vision_warmup import warmup_vision

        size = bundle.manifest.get("config", {}).get("image_size", cfg.tiny.image_size)
        warmup_log = warmup_vision(loaded.model, loaded.processor, loaded.adapter, steps=cfg.vision_warmup_steps,
                                   image_size=size, seed=cfg.seed)
    stage1: list[Record] = bundle.splits.get("pretrain", [])
    stage2: list[Record] = bundle.splits.get("finetune", [])
    if not stage2:
        stage2 = bundle.train("forget") + bundle.train("retain")
    if cfg.exclude_ids:
        excluded = set(cfg.exclude_ids)
        stage2 = [r for r in stage2 if r.profile_id not in excluded]
    if not stage2:
        raise ValueError("no training records: the data has neither a finetune split nor forget/retain training QA")
    stage1_steps = cfg.stage1_steps if stage1 else 0
    accelerator = make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    s1 = RecordSampler(stage1, cfg.batch_size, cfg.seed, rank, world) if stage1 else None
    s2 = RecordSampler(stage2, cfg.batch_size, cfg.seed + 1, rank, world)
    replay_rng = random.Random(f"replay-{cfg.seed}-{rank}")
    collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True, augment_images=True, seed=cfg.seed + rank)
    model = loaded.model
    model.train()
    device = accelerator.device

    def step_loss(step: int) -> dict[str, torch.Tensor]:
        if step < stage1_steps or (s1 is not None and replay_rng.random() < cfg.replay):
            records = s1.next()
        else:
            records = s2.next()
        batch = {k: v.to(device) for k, v in collate(records).items()}
        out = model(**batch)
        return {"loss": out.loss}

    def rng_state() -> dict:
        return {"s1": s1.state() if s1 else None, "s2": s2.state(), "replay": replay_rng.getstate(),
                "collate": (collate._rng.getstate(), collate._nprng.bit_generator.state)}

    def set_rng_state(state: dict) -> None:
        if s1 and state["s1"]:
            s1.load_state(state["s1"])
        s2.load_state(state["s2"])
        r = state["replay"]
        replay_rng.setstate((r[0], tuple(r[1]), r[2]))
        c = state["collate"][0]
        collate._rng.setstate((c[0], tuple(c[1]), c[2]))
        collate._nprng.bit_generator.state = state["collate"][1]

    loop_cfg = LoopConfig(steps=stage1_steps + cfg.stage2_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          warmup_steps=cfg.warmup_steps, schedule="cosine", seed=cfg.seed,
                          checkpoint_every=cfg.checkpoint_every, desc="finetune", log_every=25)
    result = run_loop(model, step_loss, loop_cfg, accelerator=accelerator, checkpoint_root=out, resume=resume,
                      rng_state=rng_state, set_rng_state=set_rng_state)
    model = accelerator.unwrap_model(model)
    model.eval()
    loaded.model = model
    train_log = {
        "config": asdict(cfg),
        "stage1_steps": stage1_steps,
        "stage2_steps": cfg.stage2_steps,
        "records": {"stage1": len(stage1), "stage2": len(stage2)},
        "vision_warmup": warmup_log,
        "wall_time_s": round(result.wall_time_s + (warmup_log["wall_time_s"] if warmup_log else 0.0), 2),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "log": result.log,
    }
    if accelerator.is_main_process:
        loaded.save(out)
        atomic_write_json(out / "train_log.json", train_log)
        import shutil

        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return {"loaded": loaded, "train_log": train_log}


def resume_point(out: Path, resume: bool) -> bool:
    """True when a checkpoint will be resumed (its weights already include the warm-up)."""
    return resume and (Path(out) / "checkpoint" / "loop_state.json").is_file()
