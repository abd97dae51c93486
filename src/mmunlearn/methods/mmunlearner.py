"""MMUnlearner — weights whose Fisher information on the forget VQA outweighs that on the data each
module group must keep (S_f / S_p ≥ 1); masked gradient ascent on forget alternated with an
unmasked NLL step on retain."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll
from .masks import mask_stats, modality_fisher_mask


@dataclass
class MMUnlearnerConfig(MethodConfig):
    threshold: float = 1.0
    mask_batches: int = 4


@register
class MMUnlearner(Method):
    name = "mmunlearner"
    summary = "Fisher-ratio mask per module group; masked ascent alternated with retain steps"
    default_lr = 5e-4
    default_steps = 80
    forget_modalities = ("image+text",)
    Config = MMUnlearnerConfig

    def prepare(self, ctx: Context) -> None:
        ctx.grad_masks = modality_fisher_mask(ctx, self.cfg.mask_batches, self.cfg.threshold)
        ctx.extra_log.update(mask_stats(ctx.grad_masks))

    def mask_active(self, step: int) -> bool:
        return step % 2 == 0

    def loss(self, ctx: Context, step: int):
        if step % 2 == 0:
            nll_f = answer_nll(*ctx.answer_logits(forget=ctx.forget_batch())["forget"])
            return {"loss": -self.cfg.gamma * nll_f, "nll_forget": nll_f}
        nll_r = answer_nll(*ctx.answer_logits(retain=ctx.retain_batch())["retain"])
        return {"loss": self.cfg.alpha * nll_r, "nll_retain": nll_r}
