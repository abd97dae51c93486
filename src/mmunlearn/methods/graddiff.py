"""GradDiff — ascent on forget, descent on retain, paired each step: L = −γ·NLL_f + α·NLL_r."""

from __future__ import annotations

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll, forward


@register
class GradDiff(Method):
    name = "graddiff"
    summary = "gradient difference (L = -g*NLL_f + a*NLL_r)"
    default_lr = 5e-4
    Config = MethodConfig

    def loss(self, ctx: Context, step: int):
        nll_f = answer_nll(*forward(ctx.model, ctx.forget_batch()))
        nll_r = answer_nll(*forward(ctx.model, ctx.retain_batch()))
        return {"loss": -self.cfg.gamma * nll_f + self.cfg.alpha * nll_r, "nll_forget": nll_f, "nll_retain": nll_r}
