"""GA — gradient ascent on the forget answers: L = −γ·NLL_f. The simplest baseline; it forgets fast
and drags everything else down with it, which is what the other methods are measured against."""

from __future__ import annotations

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll


@register
class GradientAscent(Method):
    name = "ga"
    summary = "gradient ascent on forget answers (L = -NLL_f)"
    needs_retain = False
    default_lr = 5e-4
    Config = MethodConfig

    def loss(self, ctx: Context, step: int):
        out = ctx.answer_logits(forget=ctx.forget_batch())
        nll_f = answer_nll(*out["forget"])
        return {"loss": -self.cfg.gamma * nll_f, "nll_forget": nll_f}
