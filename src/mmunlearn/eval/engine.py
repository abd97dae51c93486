"""Model calls the metrics need, batched once: greedy generation and answer log-likelihoods."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..data.collate import (IGNORE, TrainCollator, eval_batch, names_person, option_answer, question_names_person,
                            reasoning_prefix, render_prompt)
from ..data.record import Record
from ..models.answer_logits import answer_logits
from ..models.loader import LoadedModel


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's floating weights (bf16 for a model loaded in bf16); fp32 if none."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _to_model(batch: dict, model: torch.nn.Module) -> dict:
    """Move a batch onto the model's device; floating inputs (pixel_values) in the model's dtype.
    Integer and boolean tensors (ids, masks, image_grid_thw) keep theirs."""
    device, dtype = _device(model), _float_dtype(model)
    return {k: v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point()
            else v.to(device) if torch.is_tensor(v) else v
            for k, v in batch.items()}


@torch.no_grad()
def generate(loaded: LoadedModel, records: Sequence[Record], max_new_tokens: int = 24, batch_size: int = 64,
             desc: str = "generate", prompts: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Greedy replies (model.generate with KV cache, left padding), in the order of `records`."""
    model, processor = loaded.model, loaded.processor
    model.eval()
    tok = processor.tokenizer
    # Sort by prompt length so batches pad little; restore order at the end.
    prompts = list(prompts) if prompts is not None else [render_prompt(processor, r) for r in records]
    order = sorted(range(len(records)), key=lambda i: (records[i].image is None, len(prompts[i])))
    replies: list[str] = [""] * len(records)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        idx = order[s : s + batch_size]
        batch = _to_model(eval_batch(loaded.adapter, processor, [records[i] for i in idx], [prompts[i] for i in idx]),
                          model)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        for i, text in zip(idx, tok.batch_decode(new, skip_special_tokens=True)):
            replies[i] = text.strip()
    return replies


@torch.no_grad()
def answer_logprobs(loaded: LoadedModel, records: Sequence[Record], answers: Sequence[str], batch_size: int = 64,
                    desc: str = "score", progress: bool = True) -> list[list[float]]:
    """Per-token log-probabilities of `answers[i]` (plus end-of-answer) given record i's prompt."""
    model = loaded.model
    model.eval()
    collate = TrainCollator(loaded.adapter, loaded.processor)
    out: list[list[float]] = [[] for _ in records]
    order = sorted(range(len(records)), key=lambda i: (records[i].image is None, len(answers[i])))
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        idx = order[s : s + batch_size]
        batch = _to_model(collate([records[i] for i in idx], answers=[answers[i] for i in idx]), model)
        logits, labels = answer_logits(model, batch)
        logits = logits[:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, dim=-1)
        mask = target != IGNORE
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(idx):
            out[i] = picked[row][mask[row]].tolist()
    return out


def option_token_logprobs(loaded: LoadedModel, records: Sequence[Record], batch_size: int = 64,
                          progress: bool = True, replies: Sequence[str] | None = None) -> list[list[list[float]]]:
    """Per-token log-likelihoods of each option written as an answer ("value (letter)") after the
    classification prompt: summed, the ranking behind cls_acc_loglik (no letter parsing); averaged per
    token and normalised over the options, `prob_options` (TOFU's probability on real authors).

    Records trained to reason first (`Record.reasoning`, "Garan Hennet was born in ...") are scored after the
    model's *own* reasoning, taken from its greedy reply (`replies`, generated here if not given) —
    never the true one, which would hand it the answer. Text questions already name the person, so
    they follow their own lead (`question_names_person`): a refusing reply cannot hide what is known.
    The shared prefix adds the same amount to every option, so the ranking is the options' alone.
    """
    prefixes = ["" for _ in records]
    need = [i for i, r in enumerate(records) if names_person(r) and not question_names_person(r)]
    if need and replies is None:
        own = generate(loaded, [records[i] for i in need], max_new_tokens=16, batch_size=batch_size,
                       desc="reasoning", progress=progress)
        replies = dict(zip(need, own))
    for i, r in enumerate(records):
        if question_names_person(r):  # the question already names them: the record's own lead
            prefixes[i] = r.reasoning
        elif r.reasoning:  # a lead that names no one ("The hair is") is the record's own: reply unused
            prefixes[i] = reasoning_prefix(replies[i] if names_person(r) else "", r)
    jobs, answers, owner = [], [], []
    for i, r in enumerate(records):
        for j in range(len(r.options)):
            answer = option_answer(r.options, j)
            jobs.append(r), answers.append(f"{prefixes[i]} {answer}" if prefixes[i] else answer), owner.append(i)
    lps = answer_logprobs(loaded, jobs, answers, batch_size=batch_size, desc="options", progress=progress)
    out: list[list[list[float]]] = [[] for _ in records]
    for i, lp in zip(owner, lps):
        out[i].append(list(lp))
    return out


def option_logprobs(loaded: LoadedModel, records: Sequence[Record], batch_size: int = 64,
                    progress: bool = True, replies: Sequence[str] | None = None) -> list[list[float]]:
    """Summed log-likelihood of each option (`option_token_logprobs`): what cls_acc_loglik ranks."""
    return [[sum(lp) for lp in per_option]
            for per_option in option_token_logprobs(loaded, records, batch_size, progress, replies)]
