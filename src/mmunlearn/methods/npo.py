"""NPO — negative preference optimisation: ascent that slows down once the forget answer is already
unlikely under θ relative to the reference, so it does not run away like GA.
r = log π_θ(y_f) − log π_ref(y_f);  L = −(2/β)·mean log σ(−β r) [+ α·NLL_r]."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll, npo_loss, sequence_logprob


@dataclass
class NPOConfig(MethodConfig):
    beta: float = 0.1
    retain_term: bool = True  # the "+ α·NLL_r" of SPEC 3


@register
class NPO(Method):
    name = "npo"
    summary = "negative preference optimisation vs theta0 or a retain-only model (+ retain NLL)"
    needs_reference = True
    default_lr = 5e-4
    Config = NPOConfig
    search_space = {"beta": ("log", 0.05, 0.5), "alpha": ("log", 0.3, 10.0)}

    def loss(self, ctx: Context, step: int):
        forget = ctx.forget_batch()
        batches = {"forget": forget, **({"retain": ctx.retain_batch()} if self.cfg.retain_term else {})}
        out = ctx.answer_logits(**batches)
        logits, labels = out["forget"]
        logp = sequence_logprob(logits, labels)
        ref_logp = sequence_logprob(ctx.reference_logits(forget), labels)
        npo = npo_loss(logp, ref_logp, self.cfg.beta)
        terms = {"npo": npo, "logratio": (logp - ref_logp).mean().detach()}
        loss = self.cfg.gamma * npo
        if self.cfg.retain_term:
            nll_r = answer_nll(*out["retain"])
            loss = loss + self.cfg.alpha * nll_r
            terms["nll_retain"] = nll_r
        return {"loss": loss, **terms}
