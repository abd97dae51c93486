"""Loss pieces shared by the methods (SPEC section 3), each written once.

All work on collated batches whose `labels` mark answer tokens (everything else is -100), so the
prompt, image tokens and padding never contribute.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE
from ..models.answer_logits import answer_logits


# Set by the engine while a data-parallel loop runs: maps this process's answer-token count to the
# mean count per process over all processes. Token means then divide by the *global* count, so the
# processes' averaged gradients equal those of one process holding the whole global batch (a plain
# per-process token mean would weight a process's tokens by how few it happened to draw).
_TOKEN_COUNT_REDUCER: Callable[[torch.Tensor], torch.Tensor] | None = None


@contextmanager
def global_token_mean(reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[None]:
    """While active, `token_count` returns the mean over processes of the answer-token count."""
    global _TOKEN_COUNT_REDUCER
    previous, _TOKEN_COUNT_REDUCER = _TOKEN_COUNT_REDUCER, reduce_mean
    try:
        yield
    finally:
        _TOKEN_COUNT_REDUCER = previous


def token_count(mask: torch.Tensor) -> torch.Tensor:
    """The denominator of a token mean: this process's count, or the mean count per process in a
    data-parallel loop (the same on every process, so the step's gradient is the global token mean)."""
    n = mask.sum().float()
    if _TOKEN_COUNT_REDUCER is not None:
        n = _TOKEN_COUNT_REDUCER(n.detach())
    return n.clamp(min=1)


def forward(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a batch's answer tokens, in the compact causal layout of
    models/answer_logits.py (only answer positions are projected onto the vocabulary)."""
    return answer_logits(model, batch)


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    return logits, target, mask


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y_i | ...) for every answer token, and the mask of answer positions (B, T-1)."""
    logits, target, mask = _shifted(logits, labels)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL(y|I,x): mean cross-entropy over answer tokens of the whole batch."""
    logp, mask = token_logprobs(logits, labels)
    return -(logp.sum() / token_count(mask))


def sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL(y|I,x) per sample (B,): mean cross-entropy over each sample's own answer tokens."""
    logp, mask = token_logprobs(logits, labels)
    return -(logp.sum(dim=1) / mask.sum(dim=1).clamp(min=1))


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y|I,x) summed over answer tokens, per sample (B,) — what NPO and DPO compare."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(dim=1)


def token_kl(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p_ref ‖ p_θ) over the vocabulary at every answer position (B, T-1), and the answer mask."""
    ref, _, mask = _shifted(ref_logits, labels)
    cur, _, _ = _shifted(logits, labels)
    kl = F.kl_div(torch.log_softmax(cur, -1), torch.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1)
    return kl * mask, mask


def answer_kl(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) over the vocabulary, averaged over answer tokens."""
    kl, mask = token_kl(ref_logits, logits, labels)
    return kl.sum() / token_count(mask)


def sample_kl(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) over the vocabulary, averaged over each sample's own answer tokens (B,): every sample
    weighs the same whatever its answer's length (VKD's stranger target, one photo one vote)."""
    kl, mask = token_kl(ref_logits, logits, labels)
    return kl.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: −(2/β)·mean log σ(−β·(log π_θ − log π_ref))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


def dpo_loss(win_logp: torch.Tensor, win_ref: torch.Tensor, lose_logp: torch.Tensor, lose_ref: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DPO as unlearning uses it (open-unlearning's IdkDPO, NPO's paper):
    −(2/β)·mean log σ(β·[(log π_w − log π_ref,w) − (log π_l − log π_ref,l)]). The 2/β keeps the
    gradient's size independent of β (without it the term is 20× weaker at β 0.1)."""
    return -(2.0 / beta) * F.logsigmoid(beta * ((win_logp - win_ref) - (lose_logp - lose_ref))).mean()
