"""SalUn — GradDiff restricted to the weights most salient for the forget set: the top-p fraction by
|Σ_f ∇(−NLL_f)| (p default 0.5); other weights' gradients are zeroed every step."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll, forward
from .masks import mask_stats, salun_mask


@dataclass
class SalUnConfig(MethodConfig):
    keep: float = 0.5
    mask_batches: int = 4


@register
class SalUn(Method):
    name = "salun"
    summary = "GradDiff on the top-p salient weights (gradient-magnitude mask)"
    default_lr = 5e-4
    Config = SalUnConfig

    def prepare(self, ctx: Context) -> None:
        ctx.grad_masks = salun_mask(ctx, self.cfg.keep, self.cfg.mask_batches)
        ctx.extra_log.update(mask_stats(ctx.grad_masks))

    def loss(self, ctx: Context, step: int):
        nll_f = answer_nll(*forward(ctx.model, ctx.forget_batch()))
        nll_r = answer_nll(*forward(ctx.model, ctx.retain_batch()))
        return {"loss": -self.cfg.gamma * nll_f + self.cfg.alpha * nll_r, "nll_forget": nll_f, "nll_retain": nll_r}
