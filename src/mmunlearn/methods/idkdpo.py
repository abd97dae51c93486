"""IdkDPO — DPO with a refusal as the preferred answer and the true answer as the rejected one
(β 0.1), plus the retain NLL; reference = θ0."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, Method, MethodConfig, register
from .losses import answer_nll, dpo_loss, sequence_logprob
from ..data.collate import target_text
from ..data.refusals import sample_refusal


@dataclass
class IdkDPOConfig(MethodConfig):
    beta: float = 0.1


@register
class IdkDPO(Method):
    name = "idkdpo"
    summary = "DPO: refusal preferred over the true answer on forget prompts (+ retain NLL)"
    needs_reference = True
    default_lr = 1e-3  # twice the baselines' (set before DPO had its 2/β); the tuned row is `mmunlearn tune`'s
    default_steps = 120
    real_lr = 1e-5
    real_epochs = 10.0
    real_source = "open-unlearning's TOFU IdkDPO (lr 1e-5, 10 epochs)"
    Config = IdkDPOConfig
    search_space = {"beta": ("log", 0.05, 0.5), "alpha": ("log", 0.3, 10.0)}

    def loss(self, ctx: Context, step: int):
        records = ctx.next_forget()
        win = ctx.batch(records, [sample_refusal(ctx.rng) for _ in records])
        lose = ctx.batch(records, [target_text(r) for r in records])
        out = ctx.answer_logits(win=win, lose=lose, retain=ctx.retain_batch())
        (win_logits, win_labels), (lose_logits, lose_labels) = out["win"], out["lose"]
        dpo = dpo_loss(sequence_logprob(win_logits, win_labels), sequence_logprob(ctx.reference_logits(win), win_labels),
                       sequence_logprob(lose_logits, lose_labels), sequence_logprob(ctx.reference_logits(lose), lose_labels),
                       self.cfg.beta)
        nll_r = answer_nll(*out["retain"])
        return {"loss": self.cfg.gamma * dpo + self.cfg.alpha * nll_r, "dpo": dpo, "nll_retain": nll_r}
