"""Saliency masks over weights, computed once before unlearning (SPEC section 3).

SalUn: keep the top-p fraction of weights by |Σ_f ∇(−NLL_f)|. Fisher ratio (MMUnlearner, VKD): keep
weights whose diagonal Fisher on the forget set outweighs that on the data to preserve,
S_forget / S_preserve ≥ threshold, with the preserve data chosen per module group.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .base import Context
from .losses import answer_nll, forward


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def accumulate_gradients(model: torch.nn.Module, batches: Iterable[dict], square: bool) -> dict[str, torch.Tensor]:
    """Σ over batches of ∇NLL (square=False) or mean of (∇NLL)² (square=True, diagonal Fisher)."""
    params = _trainable(model)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        answer_nll(*forward(model, batch)).backward()
        for n, p in params.items():
            if p.grad is not None:
                g = p.grad.detach().float()
                acc[n] += g * g if square else g
        count += 1
    model.zero_grad(set_to_none=True)
    if square and count:
        for n in acc:
            acc[n] /= count
    return acc


def top_fraction_mask(scores: dict[str, torch.Tensor], keep: float) -> dict[str, torch.Tensor]:
    """1 for the `keep` fraction of largest scores over all tensors together, else 0."""
    if not 0 < keep <= 1:
        raise ValueError(f"saliency fraction must be in (0, 1], got {keep}")
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = max(1, int(round(keep * flat.numel())))
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    return {n: (s >= threshold).float() for n, s in scores.items()}


def salun_mask(ctx: Context, keep: float = 0.5, n_batches: int = 4) -> dict[str, torch.Tensor]:
    # whole global batches on every process: the mask comes out identical everywhere, no collective
    grads = accumulate_gradients(ctx.model, (ctx.batch(ctx.next_forget(), shard=False) for _ in range(n_batches)),
                                 square=False)
    return top_fraction_mask({n: g.abs() for n, g in grads.items()}, keep)


def fisher_ratio_mask(
    ctx: Context,
    forget_batches: Callable[[], Iterable[dict]],
    preserve_batches: dict[str, Callable[[], Iterable[dict]]],
    threshold: float = 1.0,
    eps: float = 1e-12,
) -> dict[str, torch.Tensor]:
    """Per module group (key of `preserve_batches`: a set of parts such as "VP" or "W"), keep the
    weights whose forget Fisher is at least `threshold` × the preserve Fisher of that group."""
    s_forget = accumulate_gradients(ctx.model, forget_batches(), square=True)
    masks: dict[str, torch.Tensor] = {}
    for parts, batches in preserve_batches.items():
        s_keep = accumulate_gradients(ctx.model, batches(), square=True)
        for n, sf in s_forget.items():
            if ctx.adapter.part_of(n) in parts:
                masks[n] = (sf / (s_keep[n] + eps) >= threshold).float()
    for n, sf in s_forget.items():  # parameters outside every group stay frozen
        masks.setdefault(n, torch.zeros_like(sf))
    return masks


def mask_stats(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    kept = sum(float(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"mask_kept_fraction": round(kept / max(1, total), 4), "mask_params": total}


def record_batches(ctx: Context, records: list, n_batches: int, batch_size: int = 8):
    """`n_batches` random batches (ctx.rng) drawn from `records` — for one-off saliency estimates.
    Every process draws and encodes the same batches, so masks computed from them agree everywhere."""
    if not records:
        return
    for _ in range(n_batches):
        yield ctx.batch([ctx.rng.choice(records) for _ in range(batch_size)], shard=False)


def modality_fisher_mask(ctx: Context, n_batches: int, threshold: float = 1.0) -> dict[str, torch.Tensor]:
    """MMUnlearner's grouping: forget image+text QA against what each group must keep — the vision
    side (V, P) on retain image+text QA, the language side (W) on retain text-only + image+text QA."""
    forget_vqa = [r for r in ctx.forget_records if r.modality == "image+text"] or ctx.forget_records
    retain_vqa = [r for r in ctx.retain_records if r.modality == "image+text"]
    retain_all = ctx.retain_records
    return fisher_ratio_mask(
        ctx,
        lambda: record_batches(ctx, forget_vqa, n_batches),
        {"VP": lambda: record_batches(ctx, retain_vqa, n_batches),
         "W": lambda: record_batches(ctx, retain_all, n_batches)},
        threshold=threshold,
    )
