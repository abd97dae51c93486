"""Vanilla fine-tune: the model must genuinely memorise the world before anything can be forgotten.

Stage 1 teaches the "real" population (MLLMU-Bench's celebrities, known before the fictitious
fine-tune); stage 2 teaches every fictitious profile (forget and retain alike, as MLLMU-Bench does)
while replaying a share of stage-1 batches so the earlier knowledge is kept.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.collate import TrainCollator, approx_length
from ..data.record import Record
from ..data.store import DataBundle, atomic_write_json, world_identity
from ..methods.losses import answer_nll
from ..models.forward import AnswerLogits, StepModule
from ..models.base import TinySize
from ..models.loader import LoadedModel, build_tiny, is_tiny, load_model
from . import zero
from .loop import LoopConfig, make_accelerator, run_loop, seed_everything
from .precision import apply as apply_precision, plan as precision_plan
from .defaults import (BATCH_SIZE, CHECKPOINT_EVERY, LR, MIN_STAGE2_STEPS, SCHEDULE_EPOCHS, STAGE1_STEPS,
                       STAGE2_STEPS, VISION_WARMUP_STEPS)
from .sampling import RecordSampler
from .saving import save_run_model
from .tracking import check_tracker, start_tracking, stop_tracking, tracker_kwargs
from .vision_warmup import caption_records


@dataclass
class FinetuneConfig:
    model: str = "tiny-llava"
    stage1_steps: int = STAGE1_STEPS
    stage2_steps: int = STAGE2_STEPS
    batch_size: int = BATCH_SIZE
    lr: float = LR
    warmup_steps: int = 100
    weight_decay: float = 0.0
    replay: float = 0.15  # share of stage-2 batches drawn from stage-1 records
    length_group: int = 4  # batches sorted by length together (train/sampling.py): 29 % fewer padded tokens
    seed: int = 0
    checkpoint_every: int = CHECKPOINT_EVERY
    tiny: TinySize = field(default_factory=TinySize)
    exclude_ids: list[str] = field(default_factory=list)  # retain-only reference: never see these people
    vision_warmup_steps: int = VISION_WARMUP_STEPS  # stage 0, tiny models only (a loaded checkpoint already sees)
    # Share of stage-1/2 batches that keep describing random portraits (tiny models with a stage 0):
    # the QA alone let seeing fade (understanding of hair colour 0.79, accessories 0.73 after stage 2).
    caption_replay: float = 0.1
    log_with: str | None = None  # tensorboard | trackio: the loss and lr under OUT/logs/ (train/tracking.py)


RUN_KEEPING = ("checkpoint_every", "log_with")  # how a run is kept or watched, not what it learns


def learning_recipe(config: FinetuneConfig | dict) -> dict:
    """What a fine-tune learns with: its config (a FinetuneConfig, or the dict a train_log.json holds) less
    RUN_KEEPING, as JSON holds it (tuples are lists there). A shipped model's provenance is matched on it."""
    import json

    cfg = asdict(config) if isinstance(config, FinetuneConfig) else dict(config)
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in RUN_KEEPING}))


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
    identity = world_identity(bundle.manifest)
    for _ in range(200):
        yield DESCRIBE_QUESTION
        yield describe(random_look(rng, identity), rng.choice(backgrounds), identity)


def stage_records(bundle: DataBundle, exclude_ids: list[str] | None = None) -> tuple[list[Record], list[Record]]:
    """(stage 1, stage 2) training records: the "real" people's, then the fictitious (or your own) people's,
    without `exclude_ids` (the retain-only reference never sees the forget people)."""
    stage1: list[Record] = bundle.splits.get("pretrain", [])
    stage2: list[Record] = bundle.splits.get("finetune", [])
    if not stage2:
        stage2 = bundle.train("forget") + bundle.train("retain")
    if exclude_ids:
        excluded = set(exclude_ids)
        stage2 = [r for r in stage2 if r.profile_id not in excluded]
    return stage1, stage2


def scaled_schedule(bundle: DataBundle, batch_size: int, exclude_ids: list[str] | None = None,
                    stage0_steps: int | None = None, stage1_steps: int | None = None,
                    stage2_steps: int | None = None) -> dict[str, int]:
    """Each stage's steps: the value given, or the default world's recipe scaled to the data.

    The default world's stages (900 / 400 / 5,000 steps) are caps; a smaller data set gets SCHEDULE_EPOCHS
    passes over its records, stage 2 at least MIN_STAGE2_STEPS. Stage 0 (tiny models only: describing random
    portraits, so the model can see before it learns people) is no longer than stage 2. Three people in
    a JSON-lines file: 200 + 200 steps, not 900 + 5,000."""
    import math

    stage1, stage2 = stage_records(bundle, exclude_ids)

    def epochs(n: int) -> int:
        return math.ceil(SCHEDULE_EPOCHS * n / max(1, min(batch_size, len(stage2))))

    s2 = stage2_steps if stage2_steps is not None else min(STAGE2_STEPS, max(MIN_STAGE2_STEPS, epochs(len(stage2))))
    s1 = stage1_steps if stage1_steps is not None else (min(STAGE1_STEPS, epochs(len(stage1))) if stage1 else 0)
    s0 = stage0_steps if stage0_steps is not None else min(VISION_WARMUP_STEPS, s2)
    return {"vision_warmup_steps": s0, "stage1_steps": s1, "stage2_steps": s2}


def prepare_model(spec: str, bundle: DataBundle, seed: int, tiny: TinySize) -> LoadedModel:
    if is_tiny(spec):
        return build_tiny(spec, world_corpus(bundle), size=tiny, seed=seed)
    return load_model(spec)


def finetune(bundle: DataBundle, cfg: FinetuneConfig, out: Path, resume: bool = False) -> dict:
    cpu_start = time.process_time()  # with the wall time: how much of the machine the run had
    seed_everything(cfg.seed)
    loaded = prepare_model(cfg.model, bundle, cfg.seed, cfg.tiny)
    identity = world_identity(bundle.manifest)  # what stage 0 and the caption replay describe
    warmup_log = None
    if is_tiny(cfg.model) and cfg.vision_warmup_steps and not resume_point(out, resume):
        from .vision_warmup import warmup_vision

        warmup_log = warmup_vision(loaded.model, loaded.processor, loaded.adapter, steps=cfg.vision_warmup_steps,
                                   image_size=_image_size(bundle, cfg), seed=cfg.seed, identity=identity)
    stage1, stage2 = stage_records(bundle, cfg.exclude_ids)
    if not stage2:
        raise ValueError("no training records: the data has neither a finetune split nor forget/retain training QA")
    stage1_steps = cfg.stage1_steps if stage1 else 0
    # bf16 weights train with fp32 master copies, autocast as the launcher or the weights say (train/precision.py)
    precision = precision_plan(None, loaded.model)
    accelerator = make_accelerator(precision.autocast, **tracker_kwargs(check_tracker(cfg.log_with), out))
    upcast = apply_precision(loaded.model, precision,
                             deepspeed_half=zero.is_deepspeed(accelerator) and precision.autocast != "no")
    tracking = start_tracking(accelerator, "finetune", asdict(cfg))
    rank, world = accelerator.process_index, accelerator.num_processes
    batch_size = fit_finetune_batch(cfg.batch_size, len(stage2), world)
    grouping = dict(length=approx_length, group=cfg.length_group)
    s1 = RecordSampler(stage1, batch_size, cfg.seed, rank, world, **grouping) if stage1 else None
    s2 = RecordSampler(stage2, batch_size, cfg.seed + 1, rank, world, **grouping)
    # Every stream is the same on every process (seed strings as single-process runs always had them);
    # each process encodes its share of the global batch.
    replay_rng = random.Random(f"replay-{cfg.seed}-0")
    captions = cfg.caption_replay if is_tiny(cfg.model) and cfg.vision_warmup_steps else 0.0
    caption_rng = random.Random(f"captions-{cfg.seed}-0")
    image_size = _image_size(bundle, cfg)
    collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True, augment_images=True, seed=cfg.seed)
    model = loaded.model
    model.train()
    device = accelerator.device
    module = StepModule(model, loaded.adapter, loaded.processor)

    def step_loss(step: int, prepared: torch.nn.Module) -> dict[str, torch.Tensor]:
        draw = replay_rng.random()
        if draw < captions:
            records = caption_records(caption_rng, batch_size * world, image_size, identity)
        elif step < stage1_steps or (s1 is not None and draw < captions + cfg.replay):
            records = s1.next()
        else:
            records = s2.next()
        batch = {k: v.to(device) for k, v in collate(records, shard=(rank, world)).items()}
        return {"loss": answer_nll(*prepared({"qa": AnswerLogits(batch)})["qa"])}

    def rng_state() -> dict:
        return {"s1": s1.state() if s1 else None, "s2": s2.state(), "replay": replay_rng.getstate(),
                "captions": caption_rng.getstate(),
                "collate": (collate._rng.getstate(), collate._nprng.bit_generator.state)}

    def set_rng_state(state: dict) -> None:
        if s1 and state["s1"]:
            s1.load_state(state["s1"])
        s2.load_state(state["s2"])
        for rng, key in ((replay_rng, "replay"), (caption_rng, "captions")):
            r = state[key]
            rng.setstate((r[0], tuple(r[1]), r[2]))
        c = state["collate"][0]
        collate._rng.setstate((c[0], tuple(c[1]), c[2]))
        collate._nprng.bit_generator.state = state["collate"][1]

    loop_cfg = LoopConfig(steps=stage1_steps + cfg.stage2_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          warmup_steps=cfg.warmup_steps, schedule="cosine", seed=cfg.seed,
                          checkpoint_every=cfg.checkpoint_every, desc="finetune", log_every=25)
    try:
        result = run_loop(module, step_loss, loop_cfg, accelerator=accelerator, checkpoint_root=out, resume=resume,
                          rng_state=rng_state, set_rng_state=set_rng_state)
    finally:
        stop_tracking(accelerator)
    model.eval()
    train_log = {
        "config": asdict(cfg),
        "stage1_steps": stage1_steps,
        "stage2_steps": cfg.stage2_steps,
        "records": {"stage1": len(stage1), "stage2": len(stage2)},
        "vision_warmup": warmup_log,
        "wall_time_s": round(result.wall_time_s + (warmup_log["wall_time_s"] if warmup_log else 0.0), 2),
        "peak_memory_mb": round(result.peak_memory_mb, 1),  # the maximum over processes
        "peak_memory_mb_per_process": result.peak_memory_mb_per_process,
        # CPU time of this process (all its threads) from model build to the end of training; over
        # wall time × threads it says whether the run had its cores to itself
        "cpu_time_s": round(time.process_time() - cpu_start, 2),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "processes": world,
        "precision": precision.as_log(),
        "batch_size": batch_size,  # per process, after fitting it to the data (fit_finetune_batch)
        "global_batch": batch_size * world,
        "steps_run": result.steps_run,
        "log": result.log,
        **({"tracking": tracking} if tracking else {}),
    }
    loaded.model = save_run_model(accelerator, model, loaded, out, restore_dtypes=upcast)
    if accelerator.is_main_process:
        atomic_write_json(out / "train_log.json", train_log)
        import shutil

        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return {"loaded": loaded, "train_log": train_log}


def fit_finetune_batch(batch_size: int, records: int, processes: int) -> int:
    """The per-process batch, no larger than the stage-2 records fill in one global batch (a batch of 16 on
    12 records would repeat records within a step); a warning says so when it is cut."""
    if records < processes:
        raise ValueError(f"{records} training record(s) cannot fill a global batch on {processes} processes: "
                         "use fewer processes")
    fitted = min(batch_size, records // processes)
    if fitted < batch_size:
        import logging

        logging.getLogger("mmunlearn").warning(
            f"batch size {batch_size} is more than the {records} training records fill on {processes} "
            f"process(es): using {fitted}")
    return fitted


def _image_size(bundle: DataBundle, cfg: FinetuneConfig) -> int:
    return bundle.manifest.get("config", {}).get("image_size", cfg.tiny.image_size)


def resume_point(out: Path, resume: bool) -> bool:
    """True when a checkpoint will be resumed (its weights already include the warm-up)."""
    return resume and (Path(out) / "checkpoint" / "loop_state.json").is_file()
