"""KL — ascent on forget while keeping retain answers' token distributions at θ0's:
L = −NLL_f + α·KL(p_θ0 ‖ p_θ) on retain answer tokens."""

from __future__ import annotations

from .base import Context, Method, MethodConfig, register
from .losses import answer_kl, answer_nll


@register
class KLMinimisation(Method):
    name = "kl"
    summary = "ascent on forget + KL to the frozen model on retain answers"
    needs_reference = True
    default_lr = 5e-4
    Config = MethodConfig
    search_space = {"alpha": ("log", 0.3, 10.0)}

    def loss(self, ctx: Context, step: int):
        forget, retain = ctx.forget_batch(), ctx.retain_batch()
        out = ctx.answer_logits(forget=forget, retain=retain)
        nll_f = answer_nll(*out["forget"])
        logits, labels = out["retain"]
        kl = answer_kl(ctx.reference_logits(retain), logits, labels)
        return {"loss": -self.cfg.gamma * nll_f + self.cfg.alpha * kl, "nll_forget": nll_f, "kl_retain": kl}
