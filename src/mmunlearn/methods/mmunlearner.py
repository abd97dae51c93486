"""MMUnlearner — weights whose Fisher information on the forget VQA outweighs that on the data each
module group must keep ((S_f + ε)/(S_p + ε) ≥ 1): the vision side keeps the retain VQA, the language
side the retain QA *and the forget people's text-only QA* (forget the photo → fact link, keep the
textual knowledge). Masked gradient ascent on the forget VQA comes once per |D_r|/|D_f| unmasked
retain NLL steps, the ratio of the two sets' sizes (one pass over each per "epoch", as the paper's
loaders run)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll
from .masks import auto_mask_slices, mask_stats, mmunlearner_sets, modality_fisher_mask


@dataclass
class MMUnlearnerConfig(MethodConfig):
    threshold: float = 1.0  # keep weights with Fisher ratio ≥ this (the paper's 1)
    mask_batches: int = 16  # random batches of 8 per Fisher estimate
    ascent_every: int = 0  # one ascent step per this many steps; 0: round(|D_r| / |D_f|) + 1
    # Fisher estimated one slice of the weights at a time (same masks; a pass per slice): 0 = 1 on tiny builds,
    # at real size the fewest (≥ 4) keeping its fp32 sums within one bf16 copy of the weights (5 at 7B)
    mask_slices: int = 0


def ascent_period(n_retain: int, n_forget: int, ascent_every: int = 0) -> int:
    """Steps per cycle: `ascent_every`, or one ascent plus round(|D_r|/|D_f|) retain steps (≥ 1 each)."""
    if ascent_every > 0:
        return ascent_every
    return max(1, round(n_retain / max(1, n_forget))) + 1


@register
class MMUnlearner(Method):
    name = "mmunlearner"
    summary = "Fisher-ratio mask per module group; masked ascent once per |D_r|/|D_f| retain steps"
    default_lr = 5e-4
    default_steps = 400  # one step in ~10 ascends on the default world (|D_r|/|D_f| ≈ 9)
    real_source = "MMUnlearner's code (lr 1e-5, batch 4, 1 epoch over the forget VQA)"
    forget_modalities = ("image+text", "text")  # text-only forget QA are preserved, never ascended
    Config = MMUnlearnerConfig
    search_space = {"threshold": ("log", 0.5, 4.0), "alpha": ("log", 0.3, 10.0)}

    @classmethod
    def check_config(cls, cfg: MMUnlearnerConfig) -> None:
        if cfg.mask_slices < 0:
            raise ValueError(f"mmunlearner mask_slices must be ≥ 0 (0: automatic), got {cfg.mask_slices}")

    def prepare(self, ctx: Context) -> None:
        forget_vqa, _, _ = mmunlearner_sets(ctx.forget_records, ctx.retain_records)
        self._forget_vqa = forget_vqa
        self.period = ascent_period(len(ctx.retain_records), len(forget_vqa), self.cfg.ascent_every)
        slices = self.cfg.mask_slices or auto_mask_slices(ctx.model)
        ctx.grad_masks = modality_fisher_mask(ctx, self.cfg.mask_batches, self.cfg.threshold, slices)
        ctx.extra_log.update(mask_stats(ctx.grad_masks))
        ctx.extra_log["mask_slices"] = slices
        ctx.extra_log["mmunlearner_ascent_every"] = self.period

    def steps_for_epochs(self, epochs: float, forget: list, retain: list, global_batch: int) -> int:
        """An epoch is a pass over the forget VQA by the ascent steps, each followed by its retain steps."""
        from ..train.presets import epochs_to_steps

        forget_vqa, _, _ = mmunlearner_sets(forget, retain)
        period = ascent_period(len(retain), len(forget_vqa), self.cfg.ascent_every)
        return epochs_to_steps(epochs, len(forget_vqa), global_batch) * period

    def is_ascent(self, step: int) -> bool:
        return step % self.period == 0

    def mask_active(self, step: int) -> bool:
        return self.is_ascent(step)

    def loss(self, ctx: Context, step: int):
        if self.is_ascent(step):
            recs = [ctx.rng.choice(self._forget_vqa) for _ in ctx.next_forget()]
            nll_f = answer_nll(*ctx.answer_logits(forget=ctx.batch(recs))["forget"])
            return {"loss": -self.cfg.gamma * nll_f, "nll_forget": nll_f}
        nll_r = answer_nll(*ctx.answer_logits(retain=ctx.retain_batch())["retain"])
        return {"loss": self.cfg.alpha * nll_r, "nll_retain": nll_r}
