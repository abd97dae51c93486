"""GradDiff — ascent on forget, descent on retain, paired each step: L = −γ·NLL_f + α·NLL_r."""

from __future__ import annotations

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll


@register
class GradDiff(Method):
    name = "graddiff"
    summary = "gradient difference (L = -g*NLL_f + a*NLL_r)"
    default_lr = 5e-4
    Config = MethodConfig
    search_space = {"alpha": ("log", 0.3, 10.0)}

    def loss(self, ctx: Context, step: int):
        out = ctx.answer_logits(forget=ctx.forget_batch(), retain=ctx.retain_batch())
        nll_f, nll_r = answer_nll(*out["forget"]), answer_nll(*out["retain"])
        return {"loss": -self.cfg.gamma * nll_f + self.cfg.alpha * nll_r, "nll_forget": nll_f, "nll_retain": nll_r}
