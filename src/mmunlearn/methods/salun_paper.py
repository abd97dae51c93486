"""SalUn as its paper writes it — random-label fine-tuning on the forget set under the saliency mask.

SalUn (Fan et al., 2024) does not ascend the forget loss: it relabels every forget example with a
random wrong label and fine-tunes on it, L = NLL(forget prompt → random label) + α·NLL_r, with gradients
restricted to the top-p salient weights (the same mask as `salun`, which is ours: masked GradDiff).

A "random label" for an MLLM answer is another person's answer to the same question:

* classification: a random wrong option of the question's own options, in the answer's form
  ("<reasoning> <option> (<letter>)");
* cloze and generation: the answer another person gives to the same fact (same `fact`, same task),
  with that person's name replaced by this person's, so the sentence still talks about whoever is asked
  (where the fact is the name itself, the other person's name is the label). When no other person
  answers the same fact (own data without facts), any other answer of the same task.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from ..data.collate import target_text
from ..data.record import Record
from .base import Context, register
from .losses import answer_nll
from .masks import mask_stats, salun_mask
from .salun import SalUn, SalUnConfig


@dataclass
class SalUnPaperConfig(SalUnConfig):
    pass


def random_label(rec: Record, pool: dict[tuple[str, str], list[Record]], by_task: dict[str, list[Record]],
                 rng: random.Random) -> str:
    """A wrong answer for `rec`, in its answer's form (see the module docstring)."""
    if rec.task == "classification" and len(rec.options) > 1:
        wrong = [i for i in range(len(rec.options)) if i != rec.answer_index]
        return target_text(rec, rng.choice(wrong))
    truth = target_text(rec)
    candidates = [r for r in pool.get((rec.fact, rec.task), []) if r.profile_id != rec.profile_id]
    if not rec.fact or not candidates:
        candidates = [r for r in by_task.get(rec.task, []) if r.profile_id != rec.profile_id]
    options = []
    for other in candidates:
        text = target_text(other)
        renamed = text.replace(other.name, rec.name) if other.name and rec.name else text
        if renamed != truth:
            options.append(renamed)
        elif text != truth:  # the fact is the name itself: the other person's name is the wrong label
            options.append(text)
    if not options:
        raise ValueError(f"salun-paper: no other answer to relabel {rec.id!r} with (every candidate equals it)")
    return rng.choice(options)


@register
class SalUnPaper(SalUn):
    """Fine-tuning on random labels of the forget set plus α·NLL on retain, under SalUn's mask."""

    name = "salun-paper"
    summary = "SalUn as its paper: fine-tune on random labels (other people's answers) under the saliency mask"
    Config = SalUnPaperConfig
    real_source = "ours: GradDiff's MLLMU-Bench setting (lr 1e-5, 1 epoch); SalUn's paper has no MLLM setting"

    def prepare(self, ctx: Context) -> None:
        ctx.grad_masks = salun_mask(ctx, self.cfg.keep, self.cfg.mask_batches)
        ctx.extra_log.update(mask_stats(ctx.grad_masks))
        people = list(ctx.forget_records) + list(ctx.retain_records)
        self._pool: dict[tuple[str, str], list[Record]] = defaultdict(list)
        self._by_task: dict[str, list[Record]] = defaultdict(list)
        for r in people:
            self._pool[(r.fact, r.task)].append(r)
            self._by_task[r.task].append(r)

    def loss(self, ctx: Context, step: int):
        forget = ctx.forget_batch(lambda recs: [random_label(r, self._pool, self._by_task, ctx.rng) for r in recs])
        out = ctx.answer_logits(forget=forget, retain=ctx.retain_batch())
        nll_random, nll_r = answer_nll(*out["forget"]), answer_nll(*out["retain"])
        return {"loss": self.cfg.gamma * nll_random + self.cfg.alpha * nll_r, "nll_random_label": nll_random,
                "nll_retain": nll_r}
