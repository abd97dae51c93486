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
    """1 for exactly the `keep` fraction of largest scores over all tensors together, else 0.

    Exact top-k, not `score >= k-th score`: with ties at the threshold (many zero scores: weights the
    forget set never reaches) a threshold test keeps every tie, up to the whole model."""
    if not 0 < keep <= 1:
        raise ValueError(f"saliency fraction must be in (0, 1], got {keep}")
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float() for n in names])
    k = max(1, int(round(keep * flat.numel())))
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, k, sorted=False).indices] = 1.0
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = chosen[start:start + size].view_as(scores[n])
        start += size
    return masks


def salun_mask(ctx: Context, keep: float = 0.5, n_batches: int = 0, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """SalUn's saliency |Σ_f ∇(−NLL_f)| over the whole forget set (`n_batches=0`, as in the paper), or
    over `n_batches` random batches (a cheaper estimate), then its exact top `keep` fraction."""
    if n_batches > 0:
        batches = record_batches(ctx, ctx.forget_records, n_batches, batch_size)
    else:
        batches = whole_set_batches(ctx, ctx.forget_records, batch_size)
    grads = accumulate_gradients(ctx.model, batches, square=False)
    return top_fraction_mask({n: g.abs() for n, g in grads.items()}, keep)


def whole_set_batches(ctx: Context, records: list, batch_size: int = 16):
    """Every record once, in order, in batches of `batch_size` — identical on every process (no shard),
    so a mask computed from them agrees everywhere without a collective."""
    for start in range(0, len(records), batch_size):
        yield ctx.batch(records[start:start + batch_size], shard=False)


def fisher_ratio_mask(
    ctx: Context,
    forget_batches: Callable[[], Iterable[dict]],
    preserve_batches: dict[str, Callable[[], Iterable[dict]]],
    threshold: float = 1.0,
    eps: float = 1e-12,
) -> dict[str, torch.Tensor]:
    """Per module group (key of `preserve_batches`: a set of parts such as "VP" or "W"), keep the
    weights with (S_forget + ε) / (S_preserve + ε) ≥ `threshold` (ε on both sides, as MMUnlearner's
    code: a weight neither set reaches has ratio 1, not 0)."""
    s_forget = accumulate_gradients(ctx.model, forget_batches(), square=True)
    masks: dict[str, torch.Tensor] = {}
    for parts, batches in preserve_batches.items():
        s_keep = accumulate_gradients(ctx.model, batches(), square=True)
        for n, sf in s_forget.items():
            if ctx.adapter.part_of(n) in parts:
                masks[n] = ((sf + eps) / (s_keep[n] + eps) >= threshold).float()
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


def mmunlearner_sets(forget: list, retain: list) -> tuple[list, list, list]:
    """(forget VQA to ascend, the vision side's preserve set, the language side's preserve set)."""
    forget_vqa = [r for r in forget if r.modality == "image+text"] or list(forget)
    retain_vqa = [r for r in retain if r.modality == "image+text"]
    forget_text = [r for r in forget if r.modality == "text"]
    return forget_vqa, retain_vqa, list(retain) + forget_text


def modality_fisher_mask(ctx: Context, n_batches: int, threshold: float = 1.0) -> dict[str, torch.Tensor]:
    """MMUnlearner's grouping: forget image+text QA against what each group must keep — the vision
    side (V, P) on retain image+text QA, the language side (W) on retain text-only + image+text QA and
    the forget people's *text-only* QA (what the method exists to keep: their textual knowledge)."""
    forget_vqa, retain_vqa, keep_language = mmunlearner_sets(ctx.forget_records, ctx.retain_records)
    return fisher_ratio_mask(
        ctx,
        lambda: record_batches(ctx, forget_vqa, n_batches),
        {"VP": lambda: record_batches(ctx, retain_vqa, n_batches),
         "W": lambda: record_batches(ctx, keep_language, n_batches)},
        threshold=threshold,
    )
