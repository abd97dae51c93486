"""Stage 0 for tiny models: teach a randomly initialised model to *see* before it must recognise.

Real MLLMs start from a pretrained encoder and a captioning stage (LLaVA's stage 1); a tiny model
built from a config starts from noise, and learning "this photo is that person" through QA alone is
very slow (measured: hair colour and accessory still at chance after 8,000 QA steps). So stage 0
trains the whole model to *describe* freshly drawn portraits of random looks — face shape, skin,
hairstyle, hair colour, accessory, shirt, background in one caption. One caption supervises every
feature at once, and it teaches the language model to read the image tokens, not just V+P to encode
them. No person of the world is involved (looks are random), so this teaches vision, not identities.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from ..data.portraits import FACIAL_HAIR, FEATURE_VALUES, Look, draw, random_pose


def random_look(rng: random.Random, identity: str = "look") -> Look:
    """A random look; under "face" identity with facial hair too (drawn last, so "look" draws as it always did)."""
    values = {f: rng.choice(v) for f, v in FEATURE_VALUES.items()}
    look = Look(eyes=rng.choice(("blue", "green", "brown")), **values)
    return replace(look, facial_hair=rng.choice(FACIAL_HAIR)) if identity == "face" else look


# Worded apart from every QA phrasing: when it read "Describe the person in this picture." (the evaluation
# subject), a fine-tune answered evaluation photo questions with a caption.
DESCRIBE_QUESTION = "Describe this portrait."


FACIAL_HAIR_NAME = {"none": "no facial hair", "moustache": "a moustache", "beard": "a beard", "goatee": "a goatee"}


def describe(look: Look, background: str, identity: str = "look") -> str:
    """The caption stage 0 teaches: every drawn feature plus the background, in a fixed order (facial hair after
    the hair under "face" identity)."""
    from ..data.world import ACCESSORY_NAME

    hair = "no hair" if look.hairstyle == "bald" else f"{look.hairstyle} {look.hair_colour} hair"
    if identity == "face":
        hair += f", {FACIAL_HAIR_NAME[look.facial_hair]}"
    return (f"{_article(look.face_shape).capitalize()} {look.face_shape} face, {look.skin} skin, {hair}, "
            f"{ACCESSORY_NAME[look.accessory]}, {_article(look.shirt)} {look.shirt} shirt, "
            f"{_article(background)} {background} background.")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def caption_records(rng: random.Random, n: int, image_size: int = 32, identity: str = "look") -> list:
    """`n` freshly drawn portraits of random looks, each with the caption stage 0 teaches (`identity`: the
    world's, so a "face" world's captions name facial hair)."""
    from ..data.record import Record

    records = []
    for i in range(n):
        look = random_look(rng, identity)
        pose = random_pose(rng, "test" if rng.random() < 0.3 else "train")
        records.append(Record(id=f"describe-{i}", profile_id="random", question=DESCRIBE_QUESTION,
                              answer=describe(look, pose.background, identity), task="generation",
                              modality="image+text", split="stage0", phase="stage0", image=draw(look, pose, image_size)))
    return records


def warmup_vision(model: torch.nn.Module, processor, adapter, steps: int = 1000, batch_size: int = 16,
                  lr: float = 2e-3, image_size: int = 32, seed: int = 0, progress: bool = True,
                  schedule: str = "cosine", identity: str = "look") -> dict:
    """Caption-train the whole model on random portraits; returns a small log (loss per 50 steps)."""
    from ..data.collate import TrainCollator
    from ..methods.losses import answer_nll
    from ..models.answer_logits import answer_logits

    rng = random.Random(f"vision-warmup-{seed}")
    collate = TrainCollator(adapter, processor)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    from .loop import LoopConfig, make_scheduler

    sched = make_scheduler(opt, LoopConfig(steps=steps, schedule=schedule, warmup_steps=min(50, steps // 10)))
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    log = []
    model.train()
    for step in tqdm(range(steps), desc="stage 0: describe portraits", disable=not progress, mininterval=1.0):
        records = caption_records(rng, batch_size, image_size, identity)
        batch = {k: v.to(device) for k, v in collate(records).items()}
        loss = answer_nll(*answer_logits(model, batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(float(loss.detach()), 4)})
    opt.zero_grad(set_to_none=True)
    return {"steps": steps, "wall_time_s": round(time.perf_counter() - t0, 2), "log": log}
