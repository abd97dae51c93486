"""One record format for every data source (synthetic world, MLLMU-Bench, CLEAR).

A record is one question about one person, with or without their photo. Everything downstream
(collator, trainer, evaluator, attacks) only ever sees `Record`s, so a new benchmark is one loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from PIL import Image

TASKS = ("generation", "classification", "cloze")
MODALITIES = ("image+text", "text")
POPULATIONS = ("fictitious", "real", "holdout")
# Which stage a record belongs to. Training phrasings (pretrain/finetune/unlearn) never reuse the
# evaluation phrasings (eval): a model that only memorised surface strings must not score on eval.
PHASES = ("pretrain", "finetune", "unlearn", "eval")
OPTION_LETTERS = "ABCD"


class RecordError(ValueError):
    """A record that cannot be used (no answer, bad options, missing image...)."""


@dataclass
class Record:
    """One QA item. `options`/`answer_index` only for classification; `image` None for text-only."""

    id: str
    profile_id: str
    question: str
    answer: str
    task: str = "generation"
    modality: str = "text"
    split: str = ""
    phase: str = "eval"
    population: str = "fictitious"
    name: str = ""
    fact: str = ""
    image: Image.Image | None = None
    options: list[str] = field(default_factory=list)
    answer_index: int = -1
    # Truth-ratio inputs (TOFU/CLEAR): a paraphrase of the true answer and wrong-but-plausible ones.
    paraphrased_answer: str = ""
    perturbed_answers: list[str] = field(default_factory=list)
    # The answer's lead: what the model says before the value. Classification/cloze answers are trained
    # as "<reasoning> <value>" ("The birthplace of Garan Hennet is" → "The birthplace of Garan Hennet is
    # Tollhaven (B)"): naming who is pictured first is the composition step (photo → person → fact) a
    # small model cannot do silently. Generation answers already open with it (their target is `answer`);
    # it is stored for them too, so refusals can keep the answer's form (data/refusals.lead_refusal).
    # Empty for benchmark data.
    reasoning: str = ""

    @property
    def is_visible_fact(self) -> bool:
        """A question about what the photo shows (hair colour, background…), not about who is in it."""
        return self.fact.startswith("visible:")

    def validate(self) -> "Record":
        where = f"record {self.id!r}"
        if not self.id:
            raise RecordError("a record has an empty id")
        if not isinstance(self.question, str) or not self.question.strip():
            raise RecordError(f"{where}: empty question")
        if self.task not in TASKS:
            raise RecordError(f"{where}: task {self.task!r} is not one of {TASKS}")
        if self.modality not in MODALITIES:
            raise RecordError(f"{where}: modality {self.modality!r} is not one of {MODALITIES}")
        if self.modality == "image+text" and self.image is None:
            raise RecordError(f"{where}: modality image+text but no image")
        if self.task == "classification":
            if len(self.options) < 2:
                raise RecordError(f"{where}: classification needs at least 2 options, got {len(self.options)}")
            if not 0 <= self.answer_index < len(self.options):
                raise RecordError(f"{where}: answer_index {self.answer_index} outside the {len(self.options)} options")
            if not self.answer:
                self.answer = self.options[self.answer_index]
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise RecordError(f"{where}: record without an answer")
        return self

    @property
    def answer_letter(self) -> str:
        return OPTION_LETTERS[self.answer_index] if self.answer_index >= 0 else ""

    def to_row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Record":
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in row.items() if k in names}
        kwargs["options"] = list(kwargs.get("options") or [])
        kwargs["perturbed_answers"] = list(kwargs.get("perturbed_answers") or [])
        if kwargs.get("answer_index") is None:
            kwargs["answer_index"] = -1
        for key in ("paraphrased_answer", "name", "fact", "split", "reasoning"):
            if kwargs.get(key) is None:
                kwargs[key] = ""
        return cls(**kwargs)


def records_to_dataset(records: Iterable[Record]):
    """Records → `datasets.Dataset` with images as the Image feature (lazy import keeps data/ light)."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "profile_id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "task": datasets.Value("string"),
            "modality": datasets.Value("string"),
            "split": datasets.Value("string"),
            "phase": datasets.Value("string"),
            "population": datasets.Value("string"),
            "name": datasets.Value("string"),
            "fact": datasets.Value("string"),
            "image": datasets.Image(),
            "options": datasets.Sequence(datasets.Value("string")),
            "answer_index": datasets.Value("int32"),
            "paraphrased_answer": datasets.Value("string"),
            "perturbed_answers": datasets.Sequence(datasets.Value("string")),
            "reasoning": datasets.Value("string"),
        }
    )
    rows = [r.to_row() for r in records]
    columns = {name: [row[name] for row in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def dataset_to_records(ds) -> list[Record]:
    out = []
    for row in ds:
        rec = Record.from_row(row)
        if rec.image is not None and rec.image.mode != "RGB":
            rec.image = rec.image.convert("RGB")
        out.append(rec)
    return out
