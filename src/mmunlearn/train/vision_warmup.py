"""Stage 0 for tiny models: teach a randomly initialised vision side to *see* before it must recognise.

Real MLLMs start from a pretrained encoder (CLIP, SigLIP); a tiny model built from a config starts
from noise, and then learning "this photo is that person" through the language model's loss is very
slow (measured: colour questions still near chance after 600 steps). So before any QA, V and P are
trained to make every drawn feature (face shape, skin, hair colour, hairstyle, accessory, shirt,
background) linearly readable from the pooled image tokens, on freshly drawn portraits of *random*
looks — no person of the world is involved, so this teaches vision, not identities.
"""

from __future__ import annotations

import inspect
import random
import time

import torch
from tqdm.auto import tqdm

from ..data.portraits import BACKGROUND, FEATURE_VALUES, IDENTITY_FEATURES, Look, draw, random_pose

WARMUP_FEATURES = {**{f: FEATURE_VALUES[f] for f in IDENTITY_FEATURES}, "background": tuple(BACKGROUND)}


def image_token_features(model: torch.nn.Module, processor, images) -> torch.Tensor:
    """What the projector hands to the language model, per image: (n_images, tokens, D)."""
    core = model.model
    enc = processor.image_processor(images=images, return_tensors="pt")
    fn = core.get_image_features
    params = inspect.signature(fn).parameters
    device = next(model.parameters()).device
    out = fn(**{k: v.to(device) for k, v in enc.items() if k in params}).pooler_output
    if isinstance(out, (list, tuple)):
        return torch.stack([o.float() for o in out])
    return out.float().reshape(len(images), -1, out.shape[-1])


def _random_look(rng: random.Random) -> Look:
    values = {f: rng.choice(v) for f, v in FEATURE_VALUES.items()}
    return Look(eyes=rng.choice(("blue", "green", "brown")), **values)


def warmup_vision(model: torch.nn.Module, processor, adapter, steps: int = 600, batch_size: int = 32,
                  lr: float = 3e-3, image_size: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """Train V+P (only) with one linear head per drawn feature; returns a small log."""
    rng = random.Random(f"vision-warmup-{seed}")
    with torch.no_grad():
        probe = image_token_features(model, processor, [draw(_random_look(rng), random_pose(rng), image_size)])
    # One linear head per feature over all image tokens (flattened): each feature must be readable
    # from the tokens the language model will attend to, wherever in the image it lies.
    dim = probe.shape[1] * probe.shape[2]
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(dim, len(v)) for f, v in WARMUP_FEATURES.items()})
    vp = [p for n, p in model.named_parameters() if adapter.part_of(n) in ("V", "P")]
    was = {id(p): p.requires_grad for p in model.parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(adapter.part_of(n) in ("V", "P"))
    opt = torch.optim.AdamW(vp + list(heads.parameters()), lr=lr)
    t0 = time.perf_counter()
    log = []
    model.train()
    for step in tqdm(range(steps), desc="vision warm-up", disable=not progress, mininterval=1.0):
        looks = [_random_look(rng) for _ in range(batch_size)]
        poses = [random_pose(rng, "test" if rng.random() < 0.3 else "train") for _ in looks]
        images = [draw(lk, ps, image_size) for lk, ps in zip(looks, poses)]
        feats = image_token_features(model, processor, images).flatten(1)
        loss = torch.zeros((), device=feats.device)
        correct = 0
        for f, values in WARMUP_FEATURES.items():
            target = torch.tensor([values.index(ps.background if f == "background" else getattr(lk, f))
                                   for lk, ps in zip(looks, poses)], device=feats.device)
            logits = heads[f](feats)
            loss = loss + torch.nn.functional.cross_entropy(logits, target)
            correct += int((logits.argmax(-1) == target).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, "loss": float(loss.detach()), "feature_acc": correct / (batch_size * len(WARMUP_FEATURES))})
    for p in model.parameters():
        p.requires_grad_(was[id(p)])
    return {"steps": steps, "wall_time_s": round(time.perf_counter() - t0, 2), "log": log}
