"""Saliency masks over weights, computed once before unlearning (SPEC section 3).

SalUn: keep the top-p fraction of weights by |Σ_f ∇(−NLL_f)|. Fisher ratio (MMUnlearner, VKD): keep
weights whose diagonal Fisher on the forget set outweighs that on the data to preserve,
S_forget / S_preserve ≥ threshold, with the preserve data chosen per module group.

Memory, so that full-scope masks fit a 7B model: scores are accumulated per parameter in fp32, turned
into scores and then into `torch.bool` masks in place, one tensor at a time; the top-k threshold is
found by streaming histograms, never by concatenating the model's scores. Masks are 1 byte per weight,
broadcast from rank 0 so every process holds the same ones, and the loop shards them like their
parameters (FSDP2) or cuts them per ZeRO partition (DeepSpeed).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable

import torch

from ..data.collate import IGNORE
from .base import Context
from .losses import answer_nll, forward


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def answer_tokens(batch: dict) -> int:
    """How many answer tokens a collated batch's loss averages over (the labels a causal LM predicts)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def accumulate_gradients(model: torch.nn.Module, batches: Iterable[dict | list[dict]], square: bool,
                         names: Iterable[str] | None = None,
                         autocast: Callable[[], ContextManager] = nullcontext) -> dict[str, torch.Tensor]:
    """Σ over batches of ∇NLL (square=False) or mean of (∇NLL)² (square=True, diagonal Fisher), in
    fp32, for the trainable parameters in `names` (default all).

    A batch is one collated dict, or a list of them (`Context.estimate_batch`: one batch cut into forwards
    no larger than a training step's): each piece's token-mean NLL is weighted by its share of the batch's
    answer tokens, so the pieces' gradients, summed in `.grad`, are the whole batch's gradient (its token mean),
    and a Fisher squares that sum, not the pieces. Every forward runs under `autocast` (the engine's: the
    same precision, and activation memory, as a training step).

    fp32, not the parameter's dtype: a bf16 sum over hundreds of batches keeps 8 mantissa bits, enough
    to reorder a top-k. Memory: one fp32 tensor per parameter and nothing model-sized besides. A fp32
    parameter's plain sum stays in its own `.grad` (autograd adds each batch into it, the same fp32 adds
    as a separate accumulator) and is taken from there, so it costs no second copy; other dtypes add
    each batch's gradient into a fp32 tensor, with no fp32 copy of the gradient in between."""
    params = _trainable(model)
    if names is not None:
        wanted = set(names)
        params = {n: p for n, p in params.items() if n in wanted}
    in_grad = {n for n, p in params.items() if not square and p.dtype == torch.float32}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items() if n not in in_grad}
    count = 0
    model.zero_grad(set_to_none=True)
    for batch in batches:
        pieces = batch if isinstance(batch, list) else [batch]
        tokens = [answer_tokens(piece) for piece in pieces] if len(pieces) > 1 else [1]
        for piece, share in zip(pieces, tokens):
            with autocast():
                loss = answer_nll(*forward(model, piece))
            if len(pieces) > 1:
                loss = loss * (share / max(1, sum(tokens)))
            loss.backward()
            del loss
        for n, p in params.items():
            if p.grad is None or n in in_grad:
                continue
            g = p.grad.detach()
            if square:
                acc[n].addcmul_(g, g)
            else:
                acc[n].add_(g)
            p.grad = None  # this batch's gradient is in the accumulator: free it before the next backward
        count += 1
    for n in params:
        if n in in_grad:
            grad = params[n].grad
            acc[n] = grad.detach() if grad is not None else torch.zeros_like(params[n])
    model.zero_grad(set_to_none=True)
    if square and count:
        for a in acc.values():
            a.div_(count)
    return {n: acc[n] for n in params}  # in parameter order, the same on every process


# Elements per piece the selection reads at once: its temporaries are a few bytes per element of one
# piece, never per element of the model.
CHUNK = 1 << 22
_BINS = 1 << 16  # a 32-bit key is selected 16 bits at a time: two histograms of 65 536 counts


def _keys(flat: torch.Tensor) -> torch.Tensor:
    """fp32 values → int32 keys in the same order, equal keys for equal values (−0 and +0 alike), so
    the k-th largest value can be found by counting the keys' bits, 16 at a time. (A NaN ranks by its
    bits: above +∞, or below −∞ when its sign bit is set.)"""
    bits = flat.to(torch.float32).contiguous().view(torch.int32)
    return torch.where(bits < 0, (bits ^ 0x7FFFFFFF) + 1, bits)  # negatives: larger magnitude, smaller key


def _chunks(scores: dict[str, torch.Tensor], name: str):
    """One score tensor, flattened, as its keys in pieces of at most CHUNK elements."""
    flat = scores[name].reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield _keys(flat[start:start + CHUNK])


def _top_bin(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest key (bins ascending in key order), and how many keys lie in
    the bins above it."""
    counts = hist.flip(0).cumsum(0).tolist()  # from the top bin down
    i = next(j for j, c in enumerate(counts) if c >= k)
    return len(counts) - 1 - i, counts[i - 1] if i else 0


def top_fraction_mask(scores: dict[str, torch.Tensor], keep: float) -> dict[str, torch.Tensor]:
    """True for exactly the `keep` fraction (k = round(keep · numel), at least 1) of largest scores
    over all tensors together, else False; one bool tensor per score tensor.

    Exact top-k, not `score >= k-th score`: with ties at the threshold (many zero scores: weights the
    forget set never reaches) a threshold test keeps every tie, up to the whole model. Tie rule: the
    scores equal to the k-th largest are kept in the order of `scores` (its keys' order, the
    parameters' order) and, inside a tensor, of the flattened index, first ones first — the same
    choice on every process and whatever CHUNK is.

    Streaming, with no concatenation over tensors: the k-th largest score is found by two histogram
    passes over order-preserving 32-bit keys (the high 16 bits, then the low 16 bits of the keys in
    the chosen high bin), and a third pass writes each tensor's mask in place. That pass consumes `scores`:
    each score tensor leaves the dict once its mask is built, so score and mask of the same weights
    exist together for one tensor at a time (the caller should hold no other reference)."""
    if not 0 < keep <= 1:
        raise ValueError(f"saliency fraction must be in (0, 1], got {keep}")
    names = list(scores)
    total = sum(scores[n].numel() for n in names)
    if not total:
        return {n: torch.zeros_like(scores.pop(n), dtype=torch.bool) for n in names}
    k = max(1, int(round(keep * total)))
    device = scores[names[0]].device
    high = torch.zeros(_BINS, dtype=torch.int64, device=device)
    for n in names:
        for key in _chunks(scores, n):
            high += torch.bincount((key >> 16) + _BINS // 2, minlength=_BINS).to(device)
    hi_bin, above = _top_bin(high, k)
    low = torch.zeros(_BINS, dtype=torch.int64, device=device)
    for n in names:
        for key in _chunks(scores, n):  # keys outside the chosen high bin go to an extra bin, dropped
            lo = torch.where((key >> 16) == hi_bin - _BINS // 2, key & 0xFFFF, _BINS)
            low += torch.bincount(lo, minlength=_BINS + 1)[:_BINS].to(device)
    lo_bin, above_in_bin = _top_bin(low, k - above)
    threshold = ((hi_bin - _BINS // 2) << 16) | lo_bin  # the k-th largest key
    ties_left = k - above - above_in_bin  # ≥ 1: how many keys equal to it are kept, first ones first
    masks: dict[str, torch.Tensor] = {}
    for n in names:
        mask = torch.empty(scores[n].shape, dtype=torch.bool, device=scores[n].device)
        flat, start = mask.view(-1), 0
        for key in _chunks(scores, n):
            chosen = flat[start:start + key.numel()]
            torch.gt(key, threshold, out=chosen)
            if ties_left:
                tie = key == threshold
                n_tie = int(tie.sum())
                if n_tie > ties_left:  # keep the first `ties_left` of them
                    tie &= tie.cumsum(0) <= ties_left
                    n_tie = ties_left
                chosen |= tie
                ties_left -= n_tie
            start += key.numel()
        del scores[n]  # this tensor's score is done with: free it before the next one's mask exists
        masks[n] = mask
    return masks


def agree_across_processes(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every process (a broadcast per tensor, in place), when torch.distributed
    runs several processes; the masks as they are otherwise.

    Every process computes its masks from the same batches (`shard=False`), but only a bitwise
    deterministic backward would make them equal; a mask that differs between processes would let
    replicas (DDP) or shards (FSDP, ZeRO) of one weight drift apart. The broadcast makes agreement
    exact whatever the kernels do; bool masks travel as bytes (1 per weight)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return masks
    for mask in masks.values():  # the same names in the same order on every process
        dist.broadcast(mask.view(torch.uint8), src=0)
    return masks


def salun_mask(ctx: Context, keep: float = 0.5, n_batches: int = 0, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """SalUn's saliency |Σ_f ∇(−NLL_f)| over the whole forget set (`n_batches=0`, as in the paper), or
    over `n_batches` random batches (a cheaper estimate), then its exact top `keep` fraction as bool
    masks, rank 0's on every process. Peak: the fp32 sums, turned into scores in place and freed one
    tensor at a time as the masks (1 byte per weight) are built."""
    if n_batches > 0:
        batches = record_batches(ctx, ctx.forget_records, n_batches, batch_size)
    else:
        batches = whole_set_batches(ctx, ctx.forget_records, batch_size)
    scores = accumulate_gradients(ctx.model, batches, square=False, autocast=ctx.autocast)
    for g in scores.values():
        g.abs_()
    return agree_across_processes(top_fraction_mask(scores, keep))


def whole_set_batches(ctx: Context, records: list, batch_size: int = 16):
    """Every record once, in order, in batches of `batch_size` — identical on every process (no shard);
    the masks computed from them are still broadcast from rank 0 (`agree_across_processes`)."""
    for start in range(0, len(records), batch_size):
        yield ctx.estimate_batch(records[start:start + batch_size])


def parameter_slices(params: dict[str, torch.Tensor], slices: int) -> list[list[str]]:
    """The names in order, cut into at most `slices` runs of about equal element counts (a tensor is never
    split: it goes to the run its middle element falls in)."""
    total = sum(p.numel() for p in params.values())
    runs: list[list[str]] = [[] for _ in range(max(1, slices))]
    seen = 0
    for name, p in params.items():
        runs[min(len(runs) - 1, int((seen + p.numel() / 2) * len(runs) / max(1, total)))].append(name)
        seen += p.numel()
    return [run for run in runs if run]


def largest_slice(params: dict[str, torch.Tensor], slices: int) -> int:
    """Elements in the largest of `parameter_slices(params, slices)`: what one slice's accumulators hold."""
    return max(sum(params[n].numel() for n in run) for run in parameter_slices(params, slices))


def auto_mask_slices(model: torch.nn.Module, most: int = 32) -> int:
    """1 for the tiny builds (one pass: their accumulators are a few MB). For a real-size model, the fewest
    slices (4 or more) whose largest holds at most a quarter of the trainable weights, so that its two fp32
    Fishers (8 B a weight) stay within one bf16 copy of them (2 B a weight). Where tensors too large to share
    out that evenly leave none up to `most` that does, the fewest with the smallest largest slice."""
    from ..train.presets import REAL_SIZE_PARAMS

    params = _trainable(model)
    total = sum(p.numel() for p in params.values())
    if total < REAL_SIZE_PARAMS:
        return 1
    best, best_largest = 4, total + 1
    for slices in range(4, most + 1):
        largest = largest_slice(params, slices)
        if 4 * largest <= total:
            return slices
        if largest < best_largest:
            best, best_largest = slices, largest
    return best


def fisher_ratio_mask(
    ctx: Context,
    forget_batches: Callable[[], Iterable[dict]],
    preserve_batches: dict[str, Callable[[], Iterable[dict]]],
    threshold: float = 1.0,
    eps: float = 1e-12,
    slices: int = 1,
) -> dict[str, torch.Tensor]:
    """Per module group (key of `preserve_batches`: a set of parts such as "VP" or "W"), keep the
    weights with (S_forget + ε) / (S_preserve + ε) ≥ `threshold` (ε on both sides, as MMUnlearner's
    code: a weight neither set reaches has ratio 1, not 0). Bool masks, rank 0's on every process.

    Each group's preserve Fisher covers that group's weights only, and the ratio is formed in place in
    the forget Fisher and turned into a mask tensor by tensor, so the peak is the forget Fisher plus
    one group's preserve Fisher (before: the forget Fisher and two model-sized preserve Fishers).

    `slices` > 1 estimates both Fishers for one run of the trainable parameters at a time (about 1/slices of
    their weights; the others' gradients are switched off for its passes), over the same batches, drawn
    once and kept for every run: the fp32 accumulators then hold 8 B per weight of one run instead of up to
    8 B per weight of the model, at the price of a pass over the estimate's batches per run (a run's passes
    skip a group it has no weight in). Runs of at most a quarter of the weights keep them within one bf16
    copy of the trainable weights (2 B each; `auto_mask_slices`); the masks are the same as with one."""
    if slices <= 1:
        s_forget = accumulate_gradients(ctx.model, forget_batches(), square=True, autocast=ctx.autocast)
        return agree_across_processes(_ratio_masks(ctx, s_forget, preserve_batches, threshold, eps))
    forget = list(forget_batches())  # drawn once, in the order the one-pass estimate draws them
    preserve = {parts: list(batches()) for parts, batches in preserve_batches.items()}
    preserve_again = {parts: (lambda b=b: b) for parts, b in preserve.items()}  # every run reads the same lists
    trainable = _trainable(ctx.model)
    masks: dict[str, torch.Tensor] = {}
    try:
        for run in parameter_slices(trainable, slices):
            inside = set(run)
            for n, p in trainable.items():
                p.requires_grad_(n in inside)
            grouped = [n for n in run if any(ctx.adapter.part_of(n) in parts for parts in preserve)]
            for n in run:  # parameters outside every group stay frozen
                if n not in grouped:
                    masks[n] = torch.zeros_like(trainable[n], dtype=torch.bool)
            if grouped:
                s_forget = accumulate_gradients(ctx.model, forget, square=True, names=grouped,
                                                autocast=ctx.autocast)
                masks.update(_ratio_masks(ctx, s_forget, preserve_again, threshold, eps, skip_empty=True))
    finally:
        for p in trainable.values():
            p.requires_grad_(True)
    return agree_across_processes({n: masks[n] for n in trainable})


def _ratio_masks(ctx: Context, s_forget: dict[str, torch.Tensor],
                 preserve_batches: dict[str, Callable[[], Iterable[dict]]], threshold: float,
                 eps: float, skip_empty: bool = False) -> dict[str, torch.Tensor]:
    """The masks of the weights in `s_forget` (consumed: each forget Fisher becomes its ratio, then its mask);
    a parameter in no group gets an all-False mask. `skip_empty`: no passes for a group with no weight here
    (only where the batches are already drawn: drawing them moves ctx.rng, and so every later draw)."""
    order = list(s_forget)
    masks: dict[str, torch.Tensor] = {}
    for parts, batches in preserve_batches.items():
        group = [n for n in order if n not in masks and ctx.adapter.part_of(n) in parts]
        if skip_empty and not group:
            continue
        s_keep = accumulate_gradients(ctx.model, batches(), square=True, names=group, autocast=ctx.autocast)
        for n in group:
            ratio = s_forget.pop(n).add_(eps).div_(s_keep.pop(n).add_(eps))
            masks[n] = ratio >= threshold
            del ratio
    for n in list(s_forget):  # parameters outside every group stay frozen
        masks[n] = torch.zeros_like(s_forget.pop(n), dtype=torch.bool)
    return {n: masks[n] for n in order}


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
        yield ctx.estimate_batch([ctx.rng.choice(records) for _ in range(batch_size)])


def mmunlearner_sets(forget: list, retain: list) -> tuple[list, list, list]:
    """(forget VQA to ascend, the vision side's preserve set, the language side's preserve set)."""
    forget_vqa = [r for r in forget if r.modality == "image+text"] or list(forget)
    retain_vqa = [r for r in retain if r.modality == "image+text"]
    forget_text = [r for r in forget if r.modality == "text"]
    return forget_vqa, retain_vqa, list(retain) + forget_text


def modality_fisher_mask(ctx: Context, n_batches: int, threshold: float = 1.0, slices: int = 1
                         ) -> dict[str, torch.Tensor]:
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
        slices=slices,
    )
