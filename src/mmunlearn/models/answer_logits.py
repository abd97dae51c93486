"""A forward pass that projects only the answer positions onto the vocabulary.

Why: every loss in mmunlearn (fine-tune NLL, GA, NPO, KL, DPO, ViKeR's KL, likelihood scoring) reads
the logits of *answer* tokens only, yet a plain `model(**batch).logits` projects every prompt, image
and padding position too. On the tiny models the vocabulary projection and its log-softmax were about
a quarter of a training step while answers are under a fifth of the tokens. Here the language model's
last hidden states are gathered at the answer positions first, and only those go through `lm_head`.

The result keeps the shape contract of a causal LM so every loss works unchanged: `logits[:, t]`
predicts `labels[:, t + 1]`. Row b holds sample b's answer predictions left-aligned
(`labels[b, 0]` and trailing slots are -100; the last logits row is a dummy that no label reads).
"""

from __future__ import annotations

import torch

from ..data.collate import IGNORE

# Language models whose head is a plain linear projection (no soft-capping / scaling after it).
_PLAIN_HEAD_TEXT_TYPES = {"llama", "qwen2", "qwen2_vl_text", "qwen2_5_vl_text", "mistral", "vicuna", "smollm3"}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The `...ForConditionalGeneration` under a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_head(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    head = getattr(model, "lm_head", None)
    linear = isinstance(head, torch.nn.Linear) or isinstance(getattr(head, "base_layer", None), torch.nn.Linear)
    if not (hasattr(model, "model") and linear):  # a LoRA-wrapped head keeps its linear base layer
        return False
    if getattr(text, "final_logit_softcapping", None) or getattr(text, "logit_scale", None):
        return False
    return getattr(text, "model_type", "") in _PLAIN_HEAD_TEXT_TYPES


def _answer_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(row, position, slot, width): position p of row b predicts an answer token (labels[b, p+1]);
    slot is its rank among row b's answer positions; width the most answer tokens in a row."""
    mask = labels[:, 1:] != IGNORE
    rows, pos = mask.nonzero(as_tuple=True)
    slot = (mask.cumsum(1) - 1)[rows, pos]
    width = int(mask.sum(1).max().item()) if mask.numel() else 0
    return rows, pos, slot, width


def compact(hidden_or_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the answer positions of a (B, T, ·) tensor into the compact layout described above."""
    rows, pos, slot, width = _answer_index(labels)
    b = labels.shape[0]
    out = hidden_or_logits.new_zeros((b, width + 1, hidden_or_logits.shape[-1]))
    out = out.index_put((rows, slot), hidden_or_logits[rows, pos])
    new_labels = torch.full((b, width + 1), IGNORE, dtype=labels.dtype, device=labels.device)
    new_labels[rows, slot + 1] = labels[rows, pos + 1]
    return out, new_labels


def answer_logits(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the answer tokens of `batch` in the compact causal layout.

    Families with a plain linear head run the language model without its head and project only the
    answer positions; any other model runs in full and its logits are gathered (same numbers, no saving).
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    core = _unwrap(model)
    if _plain_head(core):
        hidden = core.model(**inputs).last_hidden_state
        picked, new_labels = compact(hidden, labels)
        return core.lm_head(picked), new_labels
    return compact(model(**inputs).logits, labels)
