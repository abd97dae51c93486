"""Records → model inputs through the family's own processor and chat template.

Loss is on answer tokens only: the prompt (question, options, image tokens) and padding are -100.
The boundary is found by encoding the prompt alone and checking it is a prefix of prompt+answer, so
it holds for any tokenizer and template, not just ours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .portraits import augment
from .record import OPTION_LETTERS, Record

IGNORE = -100
OPTION_INSTRUCTION = "Answer with the letter of the correct option."


def user_text(rec: Record, options: Sequence[str] | None = None) -> str:
    """The user's turn: the question, plus lettered options for classification."""
    if rec.task != "classification":
        return rec.question
    options = rec.options if options is None else options
    lines = [rec.question] + [f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options)] + [OPTION_INSTRUCTION]
    return "\n".join(lines)


def option_answer(options: Sequence[str], index: int) -> str:
    """How a classification answer is written: the option, then its letter — "Norrow (B)".

    Value first, letter second: a small model recalls the fact, then copies the letter printed
    before that value in the prompt (an induction-style copy it learns quickly). Letter-first
    answers need multiple-choice symbol binding, which tiny models never learned here (they
    settle on one constant letter). Parsers accept both forms (eval.metrics.chosen_option).
    """
    return f"{options[index]} ({OPTION_LETTERS[index]})"


def target_text(rec: Record, answer_index: int | None = None, options: Sequence[str] | None = None) -> str:
    """What the model is trained to say; a record's `reasoning` leads classification and cloze
    answers ("Garan Hennet was born in Tollhaven (B)")."""
    if rec.task == "classification":
        answer = option_answer(rec.options if options is None else options,
                               rec.answer_index if answer_index is None else answer_index)
    elif rec.task == "cloze":
        answer = rec.answer
    else:
        return rec.answer
    return f"{rec.reasoning} {answer}" if rec.reasoning else answer


def names_person(rec: Record) -> bool:
    """Whether the record's reasoning names the person (fact answers): scoring must then follow the
    model's own reasoning, never the true name."""
    return bool(rec.reasoning and rec.name and rec.name in rec.reasoning)


def question_names_person(rec: Record) -> bool:
    """A question that already names the person (text modality): its own lead ("The birthplace of
    Garan Hennet is") gives nothing away, so options are scored after it — never after the model's
    reply, whose refusal ("I can't say") would lower every option alike and hide what it still knows."""
    return bool(rec.reasoning and rec.name and rec.image is None and rec.name in rec.question)


def reasoning_prefix(reply: str, rec: Record) -> str:
    """The model's *own* reasoning in `reply`, up to where its answer starts, or "" if none.

    A fact record's reasoning is "<head> <who> <tail>" ("The birthplace of Garan Hennet is"): head and
    tail come from the question, the person from the model. So the prefix is the reply's text up to
    the tail after the head: "The birthplace of Ezra Zeller is" if the model named Ezra Zeller. A reply
    that does not open with the head, or has no tail, gives "". A lead that names no one ("The hair
    is") is fixed by the question, so it is returned as it is: it gives nothing away.
    """
    if not rec.reasoning:
        return ""
    if not names_person(rec):
        return rec.reasoning
    at_name = rec.reasoning.index(rec.name)
    head, tail = rec.reasoning[:at_name], rec.reasoning[at_name + len(rec.name):]
    if not reply.startswith(head) or not tail.strip():
        return ""
    at = reply.find(tail, len(head))
    return reply[:at] + tail if at >= 0 else ""


def approx_length(rec: Record) -> int:
    """A cheap length proxy (characters, an image counted as ~16 tokens' worth) for grouping
    records of similar length into one batch; only the order it gives matters."""
    return len(user_text(rec)) + len(target_text(rec)) + (64 if rec.image is not None else 0)


def render_prompt(processor: Any, rec: Record, options: Sequence[str] | None = None, with_image: bool | None = None) -> str:
    content: list[dict] = []
    if rec.image is not None if with_image is None else with_image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": user_text(rec, options)})
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_answer(processor: Any) -> str:
    tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    return tok.eos_token or ""


@dataclass
class TrainCollator:
    """Builds (prompt + answer) batches with answer-only labels.

    `shuffle_options`: re-order classification options on the fly (training only) so the model learns
    the fact, not a letter. `augment_images`: light pixel jitter (training only).
    `answers`: optional override of the target text per record id (IdK refusals, DPO pairs...).
    `shard=(rank, world)`: encode only this process's share of a global batch (records rank, rank +
    world, ...), while drawing the option orders and augmentations of *every* record — so the random
    stream advances identically on every process and a record is shuffled the same whichever process
    encodes it (an N-process step sees what one process sees with the whole batch).
    """

    adapter: Any
    processor: Any
    shuffle_options: bool = False
    augment_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._nprng = np.random.default_rng(self.seed)

    def __call__(self, records: Sequence[Record], answers: Sequence[str] | None = None,
                 shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
        rank, world = shard
        if len(records) < world:
            raise ValueError(f"a global batch of {len(records)} records cannot be shared by {world} processes")
        prompts, fulls, images = [], [], []
        eos = end_of_answer(self.processor)
        for i, rec in enumerate(records):
            options, idx = rec.options, rec.answer_index
            # Replacement answers (refusals, DPO losers) are tied to the stored option order.
            if self.shuffle_options and rec.task == "classification" and answers is None:
                order = list(range(len(options)))
                self._rng.shuffle(order)
                options = [rec.options[j] for j in order]
                idx = order.index(rec.answer_index)
            image = rec.image
            if image is not None and self.augment_images:
                image = augment(image, self._nprng)
            if i % world != rank:  # another process encodes it; its random draws are made all the same
                continue
            prompt = render_prompt(self.processor, rec, options)
            target = answers[i] if answers is not None else target_text(rec, idx, options)
            prompts.append(prompt)
            fulls.append(prompt + target + eos)
            images.append(image)
        batch = self.adapter.encode(self.processor, fulls, images, padding_side="right")
        prompt_only = self.adapter.encode(self.processor, prompts, images, padding_side="right")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE
        prompt_lens = prompt_only["attention_mask"].sum(dim=1)
        for i, n in enumerate(prompt_lens.tolist()):
            if not torch.equal(batch["input_ids"][i, :n], prompt_only["input_ids"][i, :n]):
                raise ValueError("the tokenizer merges prompt and answer tokens; cannot mask the prompt reliably")
            labels[i, :n] = IGNORE
        batch["labels"] = labels
        return dict(batch)


def eval_batch(adapter: Any, processor: Any, records: Sequence[Record], prompts: Sequence[str] | None = None):
    """Left-padded prompts for `generate`."""
    prompts = list(prompts) if prompts is not None else [render_prompt(processor, r) for r in records]
    images = [r.image for r in records]
    return adapter.encode(processor, prompts, images, padding_side="left")
