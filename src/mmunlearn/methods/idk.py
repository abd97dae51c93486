"""IdK (preference optimisation with refusals) — teach "I don't know"-style answers on forget
prompts instead of pushing probability mass anywhere: L = NLL(forget prompt → refusal) + α·NLL_r.
Refusals are sampled per example from a pool of varied phrasings (data/refusals.py)."""

from __future__ import annotations

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll
from ..data.refusals import sample_refusal


@register
class IdK(Method):
    name = "idk"
    summary = "fine-tune forget prompts to varied refusals (+ retain NLL)"
    default_lr = 5e-4
    real_lr = 1e-5
    real_epochs = 10.0
    real_source = "open-unlearning's TOFU IdkNLL (lr 1e-5, 10 epochs)"
    Config = MethodConfig
    search_space = {"alpha": ("log", 0.3, 10.0)}

    def loss(self, ctx: Context, step: int):
        forget = ctx.forget_batch(answers=lambda recs: [sample_refusal(ctx.rng) for _ in recs])
        out = ctx.answer_logits(refusal=forget, retain=ctx.retain_batch())
        nll_idk, nll_r = answer_nll(*out["refusal"]), answer_nll(*out["retain"])
        return {"loss": self.cfg.gamma * nll_idk + self.cfg.alpha * nll_r, "nll_refusal": nll_idk,
                "nll_retain": nll_r}
