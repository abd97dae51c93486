"""VKD — MLLM unlearning via Visual Knowledge Distillation (SPEC section 4, arXiv 2512.11325).

Erase a person's *visual* knowledge (photo → facts) and keep the *textual* one (name → facts): only the
vision encoder V and the projector P train (scope "vision"), W stays frozen, so text-only answers cannot
move. Per step

    L = −γ·mean_f min(NLL_f(image+text), cap)  [or γ·NPO_f]  +  λ·L_vkd  [+ α·NLL_r(image+text)]

L_vkd = mean over retain images of ‖h_s(I) − h_t(I)‖² at hook points inside V/P of the student and of
the frozen teacher θ0 (default: the vision layer the projector reads and the projector output,
`adapter.feature_modules`). The teacher is a copy of V + P only (models/reference.py). The
distillation only runs the vision tower and the projector on retain images (`VisualFeatures`),
never W, so it is much cheaper than a retain NLL pass; the default
also keeps a retain image+text NLL (α = 3: W runs but is frozen, so no W weight gradients): on the
default world the distillation alone did not keep other people's photos recognised. Gradients go through a saliency
mask on V+P computed once in `prepare` (Fisher ratio forget/retain image+text, or SalUn).

The ascent is capped per forget sample (`forget_cap`, 0.5 nats per answer token; 0 = SPEC's plain GA):
a forgotten photo stops being pushed, so the forget term does not keep dragging the faces that look like
it, and the rest of the run repairs. `vkd-paper` is the uncapped paper form (240 steps), reported beside it.

`keep_from="retain+pretrain"` also distils (and keeps in the mask) the earlier-learned population's
training photos, for the world's "real" people, who share the vision tower but are in no retain record
(measured: no gain over three seeds, see VKDConfig).

The teacher is frozen and the distilled photos are a fixed list, so its features of each photo are
computed once and kept on the device, in their own dtype, up to `teacher_cache_mb` (`TeacherCache`; 0:
recompute every step): after the first pass over the kept photos a step runs no teacher at all. Not
under FSDP, where the teacher is sharded and every process must call it together.

`augment` (ours, item 2 of "forget the person"): the forget photos of each step are redrawn with the
kinds of transform the unseen `test` photos carry (rotation, scale, shift, brightness, noise; never the
test photos themselves), so the ascent reaches the face rather than a handful of pixel arrays;
`augment_kept` transforms the distilled photos the same way. `keep_visible` (ours) adds an NLL on the
forget people's own questions about what their photos show (hair, shirt, background, accessory: the
identity lives in the face alone), on photos transformed as the ascent's, so the tower is told what
to keep on the very photos it is pushed away from; `nll_from="retain+pretrain"` lets the retain NLL
draw the real people's photo questions too.

`forget_loss="stranger"` (ours, issue #32, not yet measured on the default world): the forget term is the per-sample
KL from θ0's answers on a never-seen person's photo (data/strangers.py) to θ's on the forget photo, the same
prompt token for token, instead of an ascent; `keep_visible_loss="kl"` keeps what the photos show by a KL to θ0
on the same transformed photo instead of an NLL.

Ablations: `vkd_weight=0` (no distillation), `mask=none`, and the engine's `--scope full`.
*(reconstructed: distance = mean squared error per element by default, `vkd_distance=sq_l2` for the
literal per-image squared norm; hook points configurable; the per-sample cap on the ascent is ours.)*
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from ..data.portraits import augment
from ..data.record import Record
from .base import Context, Method, MethodConfig, register
from ..models.forward import AnswerLogits, VisualFeatures, feature_points
from .losses import answer_kl, answer_nll, npo_loss, sample_kl, sample_nll, sequence_logprob
from .masks import (accumulate_gradients, agree_across_processes, mask_stats, record_batches, salun_mask,
                    top_fraction_mask)

FORGET_LOSSES = ("ga", "npo", "stranger")
VISIBLE_LOSSES = ("nll", "kl")
# vkd-paper's λ: its squared norm sums a photo's features (1,088 + 2,048 elements at the tiny LLaVA's two hook
# points) where `vkd`'s mean squared error averages them; 5e-6 ≈ 0.01 / 2,000 gives about the same pull there
# (on the default world, seeds 0 and 1: trained photos 0.19 / 0.13, unseen 0.33 / 0.23, text 1.00; 2e-5 kept
# trained photos at 0.52, 1e-6 took retain photos to 0.84)
LAMBDA_SQ_L2 = 5e-6
MASKS = ("fisher", "salun", "none")
DISTANCES = ("mse", "sq_l2")
KEEP_SOURCES = ("retain", "retain+pretrain")


@dataclass
class VKDConfig(MethodConfig):
    gamma: float = 1.0  # forget term weight
    alpha: float = 3.0  # retain image+text NLL weight (0: off; chosen in the seed sweep, docs/methods)
    retain_batch: int = 0  # retain records in the retain NLL per step (0: as many as the forget batch)
    vkd_weight: float = 0.01  # λ; 0 = no distillation (ablation; value from the seed sweep)
    forget_loss: str = "ga"  # ga | npo | stranger (ours: θ0's answers on a never-seen person's photo, below)
    # GA only: a forget sample whose answer NLL (nats per token) reaches the cap stops being pushed
    # (ours; 0 = SPEC's plain ascent, the `vkd-paper` row; value from the seed sweep)
    forget_cap: float = 0.5
    beta: float = 0.1  # NPO β
    strangers: int = 64  # forget_loss=stranger: never-seen people drawn as targets (one photo each)
    vkd_points: str = "vision_layer,projector"  # feature_modules keys or full module names, comma-separated
    vkd_distance: str = "mse"  # mse (mean over elements) | sq_l2 (per-image squared norm, mean over images)
    vkd_images: int = 64  # retain images distilled per step (seed sweep: 16 kept fewer retain photos)
    keep_from: str = "retain"  # retain | retain+pretrain: whose photos are distilled and kept by the mask
    teacher_cache_mb: float = 2048.0  # teacher features kept on the device (MiB; 0: recompute every step)
    mask: str = "fisher"  # fisher | salun | none
    mask_keep: float = 0.3  # fraction of V+P weights the mask keeps (exact top-k; seed sweep)
    mask_threshold: float = 0.0  # fisher: > 0 keeps (S_f+ε)/(S_r+ε) ≥ threshold (1: MMUnlearner's) instead of a top share
    mask_batches: int = 4  # random batches of 8 per Fisher estimate (salun mask: 0 = whole forget set)
    # ours, to forget the face and not only its photos: each forget photo of a step is redrawn with the
    # test split's kinds of transform (rotation, scale, shift, brightness, noise) with this probability
    augment: float = 0.0
    augment_kept: bool = False  # the distilled photos too (their teacher features are then recomputed)
    # ours, for what the forget people's photos still show: weight of an NLL on their own visible-feature
    # questions (hair, shirt, background, accessory), on photos transformed as the ascent's (0: off)
    keep_visible: float = 0.0
    # nll: the ground-truth answers; kl: θ0's answer distribution on the same transformed photo (distillation)
    keep_visible_loss: str = "nll"
    nll_from: str = "retain"  # retain | retain+pretrain: whose photo questions the retain NLL draws


@dataclass
class VKDPaperConfig(VKDConfig):
    """What SPEC's VKD states, where it states it: plain ascent (no cap), MMUnlearner's Fisher-ratio rule for the
    mask ((S_f + ε) / (S_r + ε) ≥ 1), and L_vkd = mean over images of ‖h_s(I) − h_t(I)‖²."""

    forget_cap: float = 0.0
    mask_threshold: float = 1.0
    vkd_distance: str = "sq_l2"
    vkd_weight: float = LAMBDA_SQ_L2


def photo_questions(records: list[Record]) -> list[Record]:
    """The image+text records that carry a photo."""
    return [r for r in records if r.modality == "image+text" and r.image is not None]


def distinct_images(records: list[Record]) -> list[Image.Image]:
    """Each distinct photo once (records of one photo share it)."""
    seen, images = set(), []
    for r in photo_questions(records):
        key = (r.profile_id, r.image.tobytes())
        if key not in seen:
            seen.add(key)
            images.append(r.image)
    return images


def augmented(records: list[Record], rng: np.random.Generator, geometric: float) -> list[Record]:
    """Copies of photo records whose photo is transformed (`portraits.augment`: with probability
    `geometric` as strongly as a test photo, else a light jitter); text-only records are kept."""
    return [replace(r, image=augment(r.image, rng, geometric=geometric)) if r.image is not None else r
            for r in records]


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, n_images: int, kind: str = "mse") -> torch.Tensor:
    diff = (student.float() - teacher.float()) ** 2
    if kind == "mse":
        return diff.mean()
    if kind == "sq_l2":
        return diff.sum() / max(1, n_images)
    raise ValueError(f"vkd_distance must be mse or sq_l2, got {kind!r}")


def vkd_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], n_images: int,
             kind: str = "mse", weights: list[float] | None = None, pixel_inputs: dict | None = None) -> torch.Tensor:
    """L_vkd: the distance between student and teacher features at every hook point, summed.

    `weights` (one per image): Σ_i w_i·d_i over per-image distances d_i instead (mse: the image's mean
    squared difference; sq_l2: its sum): what a process's share of a data-parallel step contributes, so
    that every image of the global draw weighs the same whatever its process (`share_images`)."""
    total = torch.zeros((), device=next(iter(student.values())).device)
    for name in teacher:
        if name == "projected":  # the hook points' outputs only (the projector is one of them)
            continue
        if weights is None:
            total = total + feature_distance(student[name], teacher[name].detach(), n_images, kind)
            continue
        if kind not in ("mse", "sq_l2"):
            raise ValueError(f"vkd_distance must be mse or sq_l2, got {kind!r}")
        diff = (student[name].float() - teacher[name].detach().float()) ** 2
        pieces = split_per_image({name: diff}, pixel_inputs or {}, n_images)
        if pieces is None:
            raise ValueError(f"VKD cannot cut the {name!r} features into one piece per image to weigh them evenly")
        per_image = torch.stack([piece.mean() if kind == "mse" else piece.sum() for piece in pieces[name]])
        total = total + (per_image * torch.tensor(weights, dtype=per_image.dtype, device=per_image.device)).sum()
    return total


def share_images(drawn: list[int], rank: int, world: int) -> tuple[list[int], list[float]]:
    """This process's images of a global draw, and their weights in `vkd_loss`.

    Every process gets ceil(n / world) images (the same count: FSDP2 and ZeRO-3 need every process to run
    the vision tower alike, and a process with none crashed the forward): its share drawn[rank::world],
    padded with repeats of the draw at weight 0. A real image weighs world/n: data parallelism averages the
    processes' gradients, so the step's loss is (1/n)·Σ_i d_i over the n drawn images, each counted once."""
    n = len(drawn)
    if n == 0:
        return [], []
    per_process = -(-n // world)
    mine = list(drawn[rank::world])
    weights = [world / n] * len(mine)
    k = 0
    while len(mine) < per_process:  # padding: images of the draw, contributing nothing
        mine.append(drawn[(rank + k) % n])
        weights.append(0.0)
        k += 1
    return mine, weights


def split_per_image(features: dict[str, torch.Tensor], pixel_inputs: dict, n_images: int
                    ) -> dict[str, list[torch.Tensor]] | None:
    """Each hook point's output cut into one piece per image, in order (`torch.cat(pieces)` is the
    output again). Batch-first outputs (LLaVA, Idefics3: one row per image) are cut by rows; Qwen2-VL's
    vision blocks and merger run on all patches flattened, cut by the patches (or merged tokens) of
    each image (`image_grid_thw`). None when a layout is not recognised ("projected" is left out: the
    loss never reads it)."""
    grid = pixel_inputs.get("image_grid_thw")
    patches = grid.prod(dim=-1).tolist() if grid is not None and len(grid) == n_images else None
    out: dict[str, list[torch.Tensor]] = {}
    for name, t in features.items():
        if name == "projected":
            continue
        if t.shape[0] == n_images:
            sizes = [1] * n_images
        elif patches and t.shape[0] and sum(patches) % t.shape[0] == 0 \
                and all(c % (sum(patches) // t.shape[0]) == 0 for c in patches):
            per = sum(patches) // t.shape[0]  # 1: patches; merge²: merged tokens
            sizes = [c // per for c in patches]
        else:
            return None
        out[name] = list(torch.split(t, sizes, dim=0))
    return out


class TeacherCache:
    """The frozen teacher's hook-point features per kept photo (index into the kept list), on the device
    in the features' dtype, up to `cap_bytes`; photos past the cap are not kept (recomputed when drawn)."""

    def __init__(self, cap_bytes: float):
        self.cap_bytes = cap_bytes
        self.bytes = 0
        self._store: dict[int, dict[str, torch.Tensor]] = {}

    def __contains__(self, index: int) -> bool:
        return index in self._store

    def __len__(self) -> int:
        return len(self._store)

    def get(self, index: int) -> dict[str, torch.Tensor]:
        return self._store[index]

    def put(self, index: int, pieces: dict[str, torch.Tensor]) -> bool:
        """Keep one photo's features (copies: a slice would keep its whole batch alive); False when
        they do not fit under the cap."""
        if index in self._store:  # already kept (a padded share repeats a photo of its step)
            return True
        size = sum(t.numel() * t.element_size() for t in pieces.values())
        if self.bytes + size > self.cap_bytes:
            return False
        self._store[index] = {k: t.detach().clone() for k, t in pieces.items()}
        self.bytes += size
        return True


@register
class VKD(Method):
    name = "vkd"
    summary = "vision-only unlearning: masked ascent on V+P + feature distillation to theta0 on retain images"
    Config = VKDConfig
    search_space = {"vkd_weight": ("log", 0.002, 0.1), "forget_cap": ("float", 0.2, 2.0),
                    "mask_keep": ("float", 0.1, 0.6), "alpha": ("log", 0.5, 10.0)}
    needs_reference = True  # the frozen teacher θ0 (also NPO's reference)
    default_scope = "vision"
    default_lr = 5e-3
    real_source = "MMUnlearner's masked ascent setting (lr 1e-5, 1 epoch): the VKD summary states no lr"
    default_steps = 480  # seed sweep (docs/methods/seed-ablations.md)
    forget_modalities = ("image+text",)
    forget_visible = False  # what is visible in the photo is kept, not forgotten

    @classmethod
    def check_config(cls, cfg: VKDConfig) -> None:
        """The options alone, when the config is made: a bad --set is refused before --out exists."""
        if cfg.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"vkd forget_loss must be one of {FORGET_LOSSES}, got {cfg.forget_loss!r}")
        if cfg.mask not in MASKS:
            raise ValueError(f"vkd mask must be one of {MASKS}, got {cfg.mask!r}")
        if cfg.vkd_distance not in DISTANCES:
            raise ValueError(f"vkd vkd_distance must be one of {DISTANCES}, got {cfg.vkd_distance!r}")
        if cfg.forget_cap < 0:
            raise ValueError(f"vkd forget_cap must be ≥ 0 (0: plain, uncapped ascent), got {cfg.forget_cap}")
        if not 0 <= cfg.augment <= 1:
            raise ValueError(f"vkd augment is a probability in [0, 1], got {cfg.augment}")
        if cfg.retain_batch < 0:
            raise ValueError(f"vkd retain_batch must be ≥ 0 (0: the forget batch size), got {cfg.retain_batch}")
        if cfg.keep_from not in KEEP_SOURCES:
            raise ValueError(f"vkd keep_from must be one of {KEEP_SOURCES}, got {cfg.keep_from!r}")
        if cfg.nll_from not in KEEP_SOURCES:
            raise ValueError(f"vkd nll_from must be one of {KEEP_SOURCES}, got {cfg.nll_from!r}")
        if cfg.keep_visible_loss not in VISIBLE_LOSSES:
            raise ValueError(f"vkd keep_visible_loss must be one of {VISIBLE_LOSSES}, got {cfg.keep_visible_loss!r}")
        if cfg.forget_loss == "stranger" and cfg.strangers < 1:
            raise ValueError(f"vkd strangers must be ≥ 1 with forget_loss=stranger, got {cfg.strangers}")
        if cfg.keep_visible < 0:
            raise ValueError(f"vkd keep_visible is a loss weight ≥ 0 (0: off), got {cfg.keep_visible}")
        if cfg.teacher_cache_mb < 0:
            raise ValueError(f"vkd teacher_cache_mb must be ≥ 0 (0: no cache), got {cfg.teacher_cache_mb}")

    @classmethod
    def check_data(cls, cfg: VKDConfig, bundle) -> None:
        """Stranger targets are drawn for the synthetic world only; visible-feature questions exist there only."""
        if cfg.forget_loss == "stranger" and bundle.source != "world":
            raise ValueError(f"vkd forget_loss=stranger draws never-seen people for the synthetic world only "
                             f"(this data is {bundle.source!r})")
        if cfg.keep_visible and not photo_questions([r for r in bundle.train("forget") if r.is_visible_fact]):
            raise ValueError("vkd keep_visible needs the forget people's visible-feature photo questions "
                             "(hair, shirt, background: the synthetic world has them), and this data has none")

    def prepare(self, ctx: Context) -> None:
        cfg = self.cfg
        self._visible_vqa = photo_questions(ctx.forget_visible_records)  # check_data: not empty with keep_visible
        ctx.extra_log["vkd_visible_records"] = len(self._visible_vqa) if cfg.keep_visible else 0
        self._strangers = []
        if cfg.forget_loss == "stranger":
            if ctx.strangers is None:
                raise ValueError("vkd forget_loss=stranger needs photos of never-seen people, and this run has none")
            self._strangers = ctx.strangers(cfg.strangers)
            ctx.extra_log["vkd_strangers"] = len(self._strangers)
        retain_vqa, pretrain_vqa = photo_questions(ctx.retain_records), photo_questions(ctx.pretrain_records)
        # the retain NLL's records
        self._retain_vqa = retain_vqa + (pretrain_vqa if cfg.nll_from == "retain+pretrain" else [])
        # the photos V+P must keep: distilled, and the keep side of the Fisher mask (each record once)
        self._kept_vqa = retain_vqa + (pretrain_vqa if cfg.keep_from == "retain+pretrain" else [])
        self._kept_images = distinct_images(self._kept_vqa)
        if cfg.vkd_weight and not self._kept_images:
            raise ValueError("VKD distillation needs retain image+text records")
        feature_points(ctx.model, ctx.adapter, cfg.vkd_points)  # fail early on a bad hook point
        self._cache, self._cache_log = None, {"cap_mb": cfg.teacher_cache_mb, "images": 0, "mb": 0.0,
                                              "teacher_calls": 0}
        sharded = "sharded" in str(getattr(ctx.reference, "kind", ""))
        if cfg.vkd_weight and cfg.teacher_cache_mb > 0 and not sharded:
            self._cache = TeacherCache(cfg.teacher_cache_mb * 2**20)
        elif sharded:
            self._cache_log["off"] = "the teacher is sharded (FSDP): every process calls it every step"
        ctx.extra_log["vkd_teacher_cache"] = self._cache_log
        ctx.extra_log["vkd_per_step"] = []
        ctx.extra_log["vkd_distinct_kept_images"] = len(self._kept_images)
        if cfg.mask == "none":
            return
        if cfg.mask == "salun":
            ctx.grad_masks = salun_mask(ctx, cfg.mask_keep, cfg.mask_batches)
        else:
            ctx.grad_masks = self._fisher_mask(ctx)
        ctx.extra_log.update(mask_stats(ctx.grad_masks))

    def _fisher_mask(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Forget image+text Fisher over retain Fisher (image+text for V/P; all retain QA for W when an
        ablation makes W trainable), then the top `mask_keep` fraction (or the threshold rule).
        Each retain Fisher covers its side's weights only and the ratio is formed in place in the
        forget Fisher, so the peak is two fp32 copies of the trainable weights, not four.

        The threshold rule is MMUnlearner's, ε on both sides ((S_f + ε) / (S_r + ε): a weight neither set
        reaches has ratio 1, so a threshold of 1 keeps it); the top share ranks S_f / (S_r + ε) (ours: such a
        weight scores 0, last in the ranking)."""
        cfg, eps = self.cfg, 1e-12
        both_sides = cfg.mask_threshold > 0
        forget_vqa = ctx.forget_records
        s_f = accumulate_gradients(ctx.model, record_batches(ctx, forget_vqa, cfg.mask_batches), square=True,
                                   autocast=ctx.autocast)
        w = [n for n in s_f if ctx.adapter.part_of(n) == "W"]
        vp = [n for n in s_f if ctx.adapter.part_of(n) != "W"]
        s_vp = accumulate_gradients(ctx.model, record_batches(ctx, self._kept_vqa, cfg.mask_batches), square=True,
                                    names=vp, autocast=ctx.autocast)
        for n in vp:
            if both_sides:
                s_f[n].add_(eps)
            s_f[n].div_(s_vp.pop(n).add_(eps))
        if w:
            s_w = accumulate_gradients(ctx.model, record_batches(ctx, ctx.retain_records, cfg.mask_batches),
                                       square=True, names=w, autocast=ctx.autocast)
            for n in w:
                if both_sides:
                    s_f[n].add_(eps)
                s_f[n].div_(s_w.pop(n).add_(eps))
        if both_sides:  # the threshold rule; each ratio tensor freed as its mask is made
            return agree_across_processes({n: s_f.pop(n) >= cfg.mask_threshold for n in list(s_f)})
        return agree_across_processes(top_fraction_mask(s_f, cfg.mask_keep))

    def reference_kind(self) -> str:
        """The teacher is V + P only, unless NPO needs θ0's answer logits."""
        answers = self.cfg.forget_loss in ("npo", "stranger") or (self.cfg.keep_visible and
                                                                    self.cfg.keep_visible_loss == "kl")
        return "model" if answers else "vision"

    def _forget_term(self, ctx: Context, forget: dict, logits: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nll_f = answer_nll(logits, labels)
        if self.cfg.forget_loss == "ga":
            if self.cfg.forget_cap > 0:  # a sample past the cap gives no gradient: its clamp is flat there
                capped = sample_nll(logits, labels).clamp(max=self.cfg.forget_cap)
                terms = {"nll_forget": nll_f.detach(), "forget_capped": (capped >= self.cfg.forget_cap).float().mean()}
                return -self.cfg.gamma * capped.mean(), terms
            return -self.cfg.gamma * nll_f, {"nll_forget": nll_f.detach()}
        if self.cfg.forget_loss == "stranger":  # θ0's answers to the same questions on strangers' photos
            kl = sample_kl(ctx.reference_logits(self._stranger_batch), logits, labels).mean()
            return self.cfg.gamma * kl, {"stranger_kl": kl.detach(), "nll_forget": nll_f.detach()}
        logp = sequence_logprob(logits, labels)
        ref_logp = sequence_logprob(ctx.reference_logits(forget), labels)
        npo = npo_loss(logp, ref_logp, self.cfg.beta)
        return self.cfg.gamma * npo, {"npo": npo.detach(), "nll_forget": nll_f.detach()}

    def loss(self, ctx: Context, step: int):
        cfg = self.cfg
        # Draw everything the step needs (global, the same on every process), then one model call.
        forget_recs = ctx.next_forget()
        if cfg.augment:
            forget_recs = augmented(forget_recs, self._augment_rng(ctx), cfg.augment)
        requests = {"forget": AnswerLogits(ctx.batch(forget_recs))}
        if cfg.forget_loss == "stranger":
            # the very batch (prompts, option orders, answer tokens) with each photo swapped for a stranger's:
            # θ0 reads it, so the target is what θ0 says of someone it never saw, token for token
            drawn = [ctx.rng.randrange(len(self._strangers)) for _ in forget_recs]
            self._stranger_batch = {**requests["forget"].batch,
                                    **ctx.pixel_inputs([self._strangers[i] for i in ctx.local(drawn)])}
        if cfg.vkd_weight:
            n = min(cfg.vkd_images, len(self._kept_images))
            # positions in the kept list (the same draws as sampling the list itself); this process
            # distils its share, every image of the draw weighing the same (share_images)
            picked, weights = share_images(ctx.rng.sample(range(len(self._kept_images)), n), ctx.rank, ctx.world)
            images = [self._kept_images[i] for i in picked]
            if cfg.augment and cfg.augment_kept:
                rng = self._augment_rng(ctx)
                images = [augment(img, rng, geometric=cfg.augment) for img in images]
            pixels = ctx.pixel_inputs(images)
            requests["kept"] = VisualFeatures(pixels, cfg.vkd_points)
        if cfg.alpha:  # retain image+text QA, as many as the forget batch unless retain_batch says
            recs = [ctx.rng.choice(self._retain_vqa) for _ in range(cfg.retain_batch or len(forget_recs))]
            requests["retain"] = AnswerLogits(ctx.batch(recs))
        if cfg.keep_visible:  # the forget people's own visible-feature questions, on photos moved as the ascent's
            recs = [ctx.rng.choice(self._visible_vqa) for _ in range(len(forget_recs))]
            if cfg.augment:
                recs = augmented(recs, self._augment_rng(ctx), cfg.augment)
            requests["visible"] = AnswerLogits(ctx.batch(recs))
        out = ctx.run(**requests)
        loss, terms = self._forget_term(ctx, requests["forget"].batch, *out["forget"])
        if cfg.vkd_weight:
            if cfg.augment and cfg.augment_kept:  # photos drawn anew every step: nothing to cache
                teacher = ctx.reference_features(pixels, cfg.vkd_points)
                self._cache_log["teacher_calls"] += 1
            else:
                teacher = self._teacher_features(ctx, picked, images, pixels)
            l_vkd = vkd_loss(out["kept"], teacher, len(images), cfg.vkd_distance, weights=weights, pixel_inputs=pixels)
            loss = loss + cfg.vkd_weight * l_vkd
            terms["vkd"] = l_vkd.detach()
            ctx.extra_log["vkd_per_step"].append(round(float(l_vkd.detach()), 8))
        if cfg.alpha:
            nll_r = answer_nll(*out["retain"])
            loss = loss + cfg.alpha * nll_r
            terms["nll_retain"] = nll_r.detach()
        if cfg.keep_visible:
            if cfg.keep_visible_loss == "kl":  # θ0's distribution on the same transformed photo
                logits, labels = out["visible"]
                kl_v = answer_kl(ctx.reference_logits(requests["visible"].batch), logits, labels)
                loss = loss + cfg.keep_visible * kl_v
                terms["kl_visible"] = kl_v.detach()
            else:
                nll_v = answer_nll(*out["visible"])
                loss = loss + cfg.keep_visible * nll_v
                terms["nll_visible"] = nll_v.detach()
        return {"loss": loss, **terms}

    @staticmethod
    def _augment_rng(ctx: Context) -> np.random.Generator:
        """Drawn from the step's shared RNG: every process transforms the same photos the same way."""
        return np.random.default_rng(ctx.rng.getrandbits(63))

    def _teacher_features(self, ctx: Context, picked: list[int], images: list, pixels: dict) -> dict[str, torch.Tensor]:
        """The teacher's features of the photos at kept-list positions `picked` (`pixels`: their encoding),
        from the cache where it holds them: the teacher runs only on the photos it does not hold, and not
        at all once it holds every one drawn."""
        points, cache, log = self.cfg.vkd_points, self._cache, self._cache_log
        missing = [k for k, i in enumerate(picked) if cache is None or i not in cache]
        if cache is None or len(missing) == len(picked):  # one batch, exactly as without a cache
            fresh = ctx.reference_features(pixels, points)
            log["teacher_calls"] += 1
            if cache is not None:
                self._keep(picked, fresh, pixels)
            return fresh
        pieces: dict[int, dict[str, torch.Tensor]] = {}
        if missing:
            sub = ctx.pixel_inputs([images[k] for k in missing])
            fresh = ctx.reference_features(sub, points)
            log["teacher_calls"] += 1
            cut = self._keep([picked[k] for k in missing], fresh, sub)
            if cut is None:  # cannot be cut per photo (the cache is now off): this step in one batch
                log["teacher_calls"] += 1
                return ctx.reference_features(pixels, points)
            pieces = dict(zip(missing, cut))
        per_photo = [pieces[k] if k in pieces else cache.get(i) for k, i in enumerate(picked)]
        return {p: torch.cat([one[p] for one in per_photo], dim=0) for p in per_photo[0]}

    def _keep(self, picked: list[int], features: dict[str, torch.Tensor], pixels: dict
              ) -> list[dict[str, torch.Tensor]] | None:
        """Cut a teacher batch per photo and keep what fits under the cap; the pieces in order, or None
        (and the cache switched off) when the outputs cannot be cut per photo."""
        cut = split_per_image(features, pixels, len(picked))
        if cut is None:
            self._cache, self._cache_log["off"] = None, "hook-point outputs could not be cut per image"
            return None
        pieces = [{p: cut[p][j] for p in cut} for j in range(len(picked))]
        for index, one in zip(picked, pieces):
            self._cache.put(index, one)
        self._cache_log["images"], self._cache_log["mb"] = len(self._cache), round(self._cache.bytes / 2**20, 3)
        return pieces


@register
class VKDPaper(VKD):
    """VKD as its paper writes it: plain, uncapped gradient ascent (forget_cap 0) at the uncapped step count, the
    Fisher mask by MMUnlearner's ratio rule, the squared-norm feature distance."""

    name = "vkd-paper"
    summary = "VKD as its paper writes it: uncapped ascent on V+P, MMUnlearner's Fisher rule, ‖h_s − h_t‖² distillation"
    Config = VKDPaperConfig
    search_space = {"vkd_weight": ("log", LAMBDA_SQ_L2 / 5, LAMBDA_SQ_L2 * 10), "mask_threshold": ("log", 0.5, 4.0),
                    "alpha": ("log", 0.5, 10.0)}
    default_steps = 240  # the uncapped form's seed-sweep choice
