"""ViKeR — Visual-Guided Key-Token Regularization (SPEC section 4, arXiv 2601.22020).

For a forget sample (photo I, question x, answer y) the *ideal* post-unlearning token distribution is
what the frozen θ0 predicts when the photo is replaced by k irrelevant images, averaged:

    p̂_i = (1/k) Σ_j p_θ0(· | I_j^irr, x, y_<i)

Ordinary tokens ("This person was born in") keep their θ0 prediction under any photo, so the KL term
cancels the gradient ascent there; the tokens that carry the private fact (the city, the name) get a
flat / other-people p̂, so the update concentrates on them (key tokens: high H(p̂_i), low p̂_i(y_i)).

    L = −γ·NLL_f + λ·(1/|y|) Σ_i KL(p̂_i ‖ p_θ(· | I, x, y_<i))  [+ α·NLL_r]   *(reconstructed)*

Two knobs read that formula the way its key-token argument intends (both on by default, both measured
in ViKeRConfig): the KL weighs each token by p̂_i(y_i), how ordinary it is (`kl_tokens="ordinary"`), and
the ascent stops on a token once p_θ(y_i) ≤ p̂_i(y_i) (`ascent_floor`). `kl_tokens="all"` with
`ascent_floor=False` is the formula as written. The default (`viker`) is our variant: that weighting,
the floor, a strong anchor (λ 20) and other people's photos as irrelevant images. `viker-paper` is the
paper's form (KL on every token, no floor, λ = γ = 1, person-free scenes); the bench reports both.

Irrelevant images: "others" (other people's photos from the retain records), "scenes" (plain drawn
solid / gradient backgrounds) or "noise" (Gaussian noise), resized to the record's photo. Scope "lora"
(LoRA r 8, α 16 on W; V and P frozen) as in the original (there lr 5e-6, 1 epoch on 7B models).
Per-token weights of a few forget samples (token, H(p̂_i), p̂_i(y_i)) go into the run log.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.collate import IGNORE, target_text
from ..data.record import Record
from .base import Context, Method, MethodConfig, register
from .losses import answer_nll, token_count

IRRELEVANT = ("others", "scenes", "noise")


@dataclass
class ViKeRConfig(MethodConfig):
    gamma: float = 1.0  # forget NLL ascent weight
    kl_weight: float = 20.0  # λ (ours: a strong anchor on ordinary tokens; seed sweep, docs/methods)
    alpha: float = 3.0  # retain NLL (the "+ retain term"); 0 = off
    # ours: ascent only while p_θ(y_i) > p̂_i(y_i) (False: the literal −NLL_f over every answer token)
    ascent_floor: bool = True
    kl_tokens: str = "ordinary"  # ordinary: each token's KL weighted by p̂_i(y_i) (ours) | all (paper)
    # how the ascent's token NLLs are averaged: token (a global token mean: ours, the bench's rows) | sample
    # ((1/|y|) Σ_i per answer, as the KL: the paper's, where λ = γ cancels the ascent on ordinary tokens)
    ascent_mean: str = "token"
    k: int = 5  # irrelevant images per sample (fewer is unstable)
    irrelevant: str = "others"  # others (ours) | scenes | noise (images that show no person: the paper's)
    noise_std: float = 64.0  # "noise": pixel σ around grey
    log_samples: int = 6  # forget samples whose per-token weights are logged


@dataclass
class ViKeRPaperConfig(ViKeRConfig):
    kl_weight: float = 1.0  # λ comparable to γ: the KL reweights the ascent's tokens, not an anchor
    alpha: float = 1.0
    ascent_floor: bool = False
    kl_tokens: str = "all"
    ascent_mean: str = "sample"
    irrelevant: str = "scenes"


# ---- p̂ ------------------------------------------------------------------------------------------
def answer_positions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits that predict answer tokens, flattened batch-major: (N_answer_tokens, V)."""
    return logits[:, :-1][labels[:, 1:] != IGNORE].float()


def answer_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer token ids (N,), owning sample index (N,)) in the order of `answer_positions`."""
    target = labels[:, 1:]
    mask = target != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(target)
    return target[mask], rows[mask]


@torch.no_grad()
def ideal_distribution(reference: Callable[[dict], tuple[torch.Tensor, torch.Tensor]],
                       make_batch: Callable[[list[Record], list[str]], dict],
                       records: Sequence[Record], answers: Sequence[str],
                       irrelevant: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
    """p̂ over the answer tokens of `records` (N, V): the mean over j of θ0's softmax with record i's
    photo replaced by `irrelevant[j][i]` (same question, same answer prefix). One batched forward of
    `reference` (batch → θ0's answer logits and labels, models/answer_logits.py layout)."""
    k = len(irrelevant)
    if k == 0:
        raise ValueError("ideal_distribution needs at least one irrelevant image per record")
    swapped = [dataclasses.replace(r, image=imgs[i]) for imgs in irrelevant for i, r in enumerate(records)]
    batch = make_batch(swapped, list(answers) * k)
    logits, labels = reference(batch)
    probs = torch.softmax(answer_positions(logits, labels), dim=-1)
    return probs.view(k, -1, probs.shape[-1]).mean(0)


def forget_terms(logits: torch.Tensor, p_hat: torch.Tensor, ids: torch.Tensor, owner: torch.Tensor, n: int,
                 kl_tokens: str = "ordinary", ascent_floor: bool = True,
                 ascent_mean: str = "token") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL to ascend, KL term, share of tokens still ascending) over the answer tokens (N, V) of a batch.

    The KL is per sample (1/|y|) Σ_i KL(p̂_i ‖ p_θ,i), each token weighted by p̂_i(y_i) when
    `kl_tokens="ordinary"`. The ascent is the NLL of the answer tokens, averaged the same way
    (`ascent_mean="sample"`: the paper's (1/|y|) Σ_i, so with λ = γ the two terms cancel on a token whose p̂ is
    its own answer, whatever the answers' lengths: the gradient on token i of sample s is (onehot(y_i) − p̂_i)/(B|y_s|))
    or as a global token mean (`"token"`, ours). With `ascent_floor` a token whose p_θ(y_i) has fallen to
    p̂_i(y_i) or below stops contributing.
    """
    logp_y = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    p_hat_y = p_hat.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    above = (logp_y > torch.log(p_hat_y.clamp_min(1e-12))).detach()
    keep = above if ascent_floor else torch.ones_like(above)
    if ascent_mean == "sample":
        ascent = per_sample_mean(-(logp_y * keep), owner, n)
    else:
        ascent = -(logp_y * keep).sum() / token_count(torch.ones_like(ids))  # global token mean (losses.py)
    token_kls = token_kl(p_hat, logits)
    if kl_tokens == "ordinary":
        token_kls = token_kls * p_hat_y
    return ascent, per_sample_mean(token_kls, owner, n), above.float().mean()


def token_kl(p_hat: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p̂_i ‖ p_θ,i) per answer token (N,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (p_hat * (torch.log(p_hat.clamp_min(1e-12)) - logp)).sum(-1)


def per_sample_mean(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """(1/|y|) Σ_i over each sample's tokens, then the mean over samples."""
    sums = torch.zeros(n, device=values.device).index_add(0, owner, values)
    counts = torch.zeros(n, device=values.device).index_add(0, owner, torch.ones_like(values))
    return (sums / counts.clamp(min=1))[counts > 0].mean()


# ---- irrelevant images ---------------------------------------------------------------------------
def scene_image(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A plain drawn scene: a solid colour or a two-colour gradient (horizontal, vertical, diagonal)."""
    w, h = size
    c0 = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.3:
        return Image.fromarray(np.broadcast_to(c0, (h, w, 3)).astype(np.uint8), "RGB")
    c1 = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = {"h": xs / max(1, w - 1), "v": ys / max(1, h - 1),
         "d": (xs + ys) / max(1, w + h - 2)}[rng.choice("hvd")]
    img = c0 + (c1 - c0) * t[..., None]
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def noise_image(rng: random.Random, size: tuple[int, int], std: float = 64.0) -> Image.Image:
    w, h = size
    gen = np.random.default_rng(rng.getrandbits(32))
    return Image.fromarray(np.clip(128 + std * gen.standard_normal((h, w, 3)), 0, 255).astype(np.uint8), "RGB")


class IrrelevantPool:
    """k irrelevant images for a record, drawn with the caller's RNG, sized like the record's photo."""

    def __init__(self, kind: str, retain_records: Sequence[Record], noise_std: float = 64.0):
        if kind not in IRRELEVANT:
            raise ValueError(f"viker irrelevant must be one of {IRRELEVANT}, got {kind!r}")
        self.kind, self.noise_std = kind, noise_std
        self.photos: list[tuple[str, Image.Image]] = []
        if kind == "others":
            seen = set()
            for r in retain_records:
                if r.image is None:
                    continue
                key = (r.profile_id, r.image.tobytes())
                if key not in seen:
                    seen.add(key)
                    self.photos.append((r.profile_id, r.image))
            if not self.photos:
                raise ValueError("viker irrelevant=others needs retain records with photos")

    def draw(self, rec: Record, k: int, rng: random.Random) -> list[Image.Image]:
        size = rec.image.size
        if self.kind == "scenes":
            return [scene_image(rng, size) for _ in range(k)]
        if self.kind == "noise":
            return [noise_image(rng, size, self.noise_std) for _ in range(k)]
        others = [im for pid, im in self.photos if pid != rec.profile_id] or [im for _, im in self.photos]
        picks = rng.sample(others, k) if len(others) >= k else [rng.choice(others) for _ in range(k)]
        return [im if im.size == size else im.resize(size) for im in picks]


# ---- the method ----------------------------------------------------------------------------------
@register
class ViKeR(Method):
    name = "viker"
    summary = "ascent + KL to theta0's prediction under irrelevant photos (updates focus on key tokens)"
    Config = ViKeRConfig
    search_space = {"kl_weight": ("log", 1.0, 50.0), "alpha": ("log", 0.5, 10.0)}
    needs_reference = True
    default_scope = "lora"
    default_lr = 1e-3
    default_steps = 100
    real_lr = 5e-6
    real_epochs = 1.0
    real_source = "the ViKeR paper (LoRA r 8, lr 5e-6, 1 epoch)"
    forget_modalities = ("image+text",)
    forget_visible = False  # what is visible in the photo is kept, not forgotten

    @classmethod
    def check_config(cls, cfg: ViKeRConfig) -> None:
        if cfg.kl_tokens not in ("all", "ordinary"):
            raise ValueError(f"viker kl_tokens must be all or ordinary, got {cfg.kl_tokens!r}")
        if cfg.ascent_mean not in ("token", "sample"):
            raise ValueError(f"viker ascent_mean must be token or sample, got {cfg.ascent_mean!r}")
        if cfg.k < 1:
            raise ValueError(f"viker k must be ≥ 1, got {cfg.k}")

    def prepare(self, ctx: Context) -> None:
        cfg = self.cfg
        self.pool = IrrelevantPool(cfg.irrelevant, ctx.retain_records, cfg.noise_std)
        if cfg.log_samples > 0:
            ctx.extra_log["viker_key_tokens"] = self.key_tokens(ctx, ctx.forget_records[: cfg.log_samples])

    def _shuffled(self, ctx: Context, recs: Sequence[Record]) -> tuple[list[Record], list[str]]:
        """Option order drawn once per sample, shared by the real and the irrelevant-photo copies."""
        out = []
        for r in recs:
            if r.task == "classification":
                order = list(range(len(r.options)))
                ctx.rng.shuffle(order)
                r = dataclasses.replace(r, options=[r.options[j] for j in order],
                                        answer_index=order.index(r.answer_index))
            out.append(r)
        return out, [target_text(r) for r in out]

    def _p_hat(self, ctx: Context, recs: list[Record], answers: list[str], local: bool = True) -> torch.Tensor:
        """p̂ for this process's share of the global `recs` (`local`), or for all of them; the
        irrelevant photos are drawn for every record either way (one stream on every process)."""
        draws = [self.pool.draw(r, self.cfg.k, ctx.rng) for r in recs]
        if local:
            recs, answers, draws = ctx.local(recs), ctx.local(answers), ctx.local(draws)
        irrelevant = [[d[j] for d in draws] for j in range(self.cfg.k)]
        return ideal_distribution(ctx.reference_answer, lambda r, a: ctx.batch(r, a, shard=False), recs, answers,
                                  irrelevant)

    @torch.no_grad()
    def key_tokens(self, ctx: Context, records: Sequence[Record]) -> list[dict]:
        """Per answer token of each record: text, H(p̂_i), p̂_i(y_i) and weight = 1 − p̂_i(y_i)."""
        recs, answers = list(records), [target_text(r) for r in records]
        p_hat = self._p_hat(ctx, recs, answers, local=False)
        labels = ctx.batch(recs, answers, shard=False)["labels"]
        ids, owner = answer_targets(labels)
        entropy = -(p_hat * torch.log(p_hat.clamp_min(1e-12))).sum(-1)
        p_y = p_hat.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        tok = ctx.processor.tokenizer
        out = [{"id": r.id, "profile_id": r.profile_id, "fact": r.fact, "task": r.task, "answer": a, "tokens": []}
               for r, a in zip(recs, answers)]
        for t, o, h, p in zip(ids.tolist(), owner.tolist(), entropy.tolist(), p_y.tolist()):
            out[o]["tokens"].append({"token": tok.decode([t]), "entropy": round(h, 4), "p_hat_y": round(p, 4),
                                     "weight": round(1.0 - p, 4)})
        return out

    def loss(self, ctx: Context, step: int):
        cfg = self.cfg
        recs, answers = self._shuffled(ctx, ctx.next_forget())
        p_hat = self._p_hat(ctx, recs, answers)
        batches = {"forget": ctx.batch(recs, answers), **({"retain": ctx.retain_batch()} if cfg.alpha else {})}
        out = ctx.answer_logits(**batches)
        logits, labels = out["forget"]
        nll_f = answer_nll(logits, labels)
        ids, owner = answer_targets(labels)
        ascent, kl, share = forget_terms(answer_positions(logits, labels), p_hat, ids, owner, labels.shape[0],
                                         cfg.kl_tokens, cfg.ascent_floor, cfg.ascent_mean)
        terms = {"nll_forget": nll_f.detach(), "kl_ideal": kl.detach(), "ascending_share": share}
        loss = -cfg.gamma * ascent + cfg.kl_weight * kl
        if cfg.alpha:
            nll_r = answer_nll(*out["retain"])
            loss = loss + cfg.alpha * nll_r
            terms["nll_retain"] = nll_r.detach()
        return {"loss": loss, **terms}



@register
class ViKeRPaper(ViKeR):
    """ViKeR as its paper: KL to p̂ on every answer token, no ascent floor, λ = γ, and irrelevant images
    that show no person (drawn scenes), so p̂ names nobody."""

    name = "viker-paper"
    summary = "ViKeR as its paper: KL on every token, no floor, person-free irrelevant images"
    Config = ViKeRPaperConfig
    search_space = {"kl_weight": ("log", 0.3, 3.0), "alpha": ("log", 0.3, 10.0)}
