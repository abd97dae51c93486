"""CLEAR (character unlearning in textual and visual modalities) from a local folder → `Record`s.

Nothing is fetched: `folder` must already hold a local copy of the released dataset (Hugging Face
dataset ``therem/CLEAR``), one entry per split, each ``NAME.parquet``, ``NAME/*.parquet`` (the
released ``forget10/train-00000-of-00001.parquet``) or ``NAME-*.parquet``.

Released layout (what the loader reads):

* ``forget01|05|10`` / ``retain99|95|90`` – photos of the (TOFU) fictitious authors: ``image``,
  ``caption`` (a description of the person in the photo, naming them), ``name``;
  ``forgetNN+tofu`` / ``retainNN+tofu`` hold the same rows plus TOFU's text-only QA rows (``image``
  null, ``question``, ``answer``). The ``+tofu`` file is used when present, else the plain one.
* ``forgetNN_perturbed`` / ``retain_perturbed`` – evaluation rows: ``image, caption, name,
  paraphrased_caption, perturbed_captions[], perturbed_names[]``.
* ``real_faces`` (``image, answer`` = the celebrity's name, ``options``) and ``real_world``
  (``image, question, answer, options``): knowledge the model had before, to be kept.

Field names verified against the public reference code (somvy/multimodal_unlearning:
``mm/dataset.py`` – ``image``, ``caption``, ``question``, ``answer``, a null ``image`` meaning a
text-only QA row; ``config/mm/eval.yaml`` – ``caption``/``paraphrased_caption``/
``perturbed_captions`` and ``name``/``perturbed_names`` for the perturbed splits,
``answer``/``options`` for ``real_faces`` and ``question``/``answer``/``options`` for
``real_world``, and ``retain_perturbed`` as the retain evaluation split). Row counts in the
dataset viewer (forget10 379, forget10+tofu 779) confirm ``+tofu`` = captions + 400 TOFU QA.
Not verified: whether ``options`` contains the true answer (it is removed from the perturbed list
either way).

Mapping to our splits (all records validated; any problem is a one-line `DataError`):

* ``forget`` / ``retain``, phase ``unlearn``: every row of ``forgetNN(+tofu)`` /
  ``retainMM(+tofu)``: photo rows → image+text generation (question `CAPTION_PROMPT`, answer the
  caption), QA rows → text generation.
* ``forget``, phase ``eval``: per ``forgetNN_perturbed`` row, a caption record (paraphrased_answer
  = paraphrased_caption, perturbed_answers = perturbed_captions) and a face → name record
  (`NAME_PROMPT`, answer the name, perturbed_answers = perturbed_names); plus the TOFU QA rows again
  as eval text records (CLEAR has no separate evaluation phrasing for them).
* ``retain``, phase ``eval``: the same from ``retain_perturbed`` when present (else the retain
  caption rows again, without perturbed answers), plus the retain QA rows.
* ``real``: ``real_faces`` (question `NAME_PROMPT`) and ``real_world`` rows, image+text generation,
  population ``real``; ``options`` other than the answer become perturbed answers.

CLEAR has no person id column: photo rows use their ``name`` as profile id; a TOFU QA row is given
the author whose full name its question/answer mentions, else the majority author of its block of
20 (TOFU stores 20 QA per author, in order), else ``clear-<split>-qa-block<k>``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DataError
from .mllmu import Row, _safe, check_folder, decode_image, find_split_files, has_split, iter_rows, text_value, validated
from .record import Record

BENCH = "CLEAR"
FORGET_PERCENTS = (1, 5, 10)
CAPTION_PROMPT = "Describe the person in this image."
NAME_PROMPT = "What is the name of the person in this image?"
TOFU_BLOCK = 20
PERTURBED_FIELDS = ("image", "caption", "name", "paraphrased_caption", "perturbed_captions", "perturbed_names")
_CLEAR_HINT = (
    "put a local copy of the released CLEAR parquet files there (Hugging Face dataset therem/CLEAR: "
    "forget01/05/10[+tofu], retain99/95/90[+tofu], forgetNN_perturbed, retain_perturbed, real_faces, real_world)"
)


def _forget_percent(forget_split: str | int) -> int:
    match = re.fullmatch(r"(?:forget)?_?0*(\d+)", str(forget_split).strip().lower())
    pct = int(match.group(1)) if match else -1
    if pct not in FORGET_PERCENTS:
        raise DataError(f"{BENCH}: forget_split {forget_split!r} is not one of forget01, forget05, forget10")
    return pct


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, dict) and value.get("bytes") is None and not value.get("path"))


def _string_list(value: Any, where: str, field_name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field {field_name!r} must be a list of strings")
    return [text_value(v, where, f"{field_name}[{i}]") for i, v in enumerate(value)]


class _Images:
    """Decode each photo once; the same PIL object is shared by the records that show it."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, int], Image.Image] = {}

    def get(self, row: Row, where: str) -> Image.Image:
        key = (str(row.path), row.index)
        if key not in self.cache:
            self.cache[key] = decode_image(row.data.get("image"), where, row.path.parent)
        return self.cache[key]


def _train_name(root: Path, base: str) -> str:
    return f"{base}+tofu" if has_split(root, f"{base}+tofu") else base


def _assign_qa_profiles(qa_rows: list[tuple[Row, str, str]], names: list[str], split: str) -> list[str]:
    """Profile id per TOFU QA row: full name mentioned, else block majority, else a block id."""
    longest_first = sorted({n for n in names if n}, key=len, reverse=True)
    direct: list[str | None] = []
    for _row, question, answer in qa_rows:
        text = f"{question} {answer}".lower()
        hits = [n for n in longest_first if n.lower() in text]
        # One author named (a shorter name inside the longest one, "Ann Lee" in "Ann Leeds", is not a second one).
        unambiguous = bool(hits) and all(h.lower() in hits[0].lower() for h in hits)
        direct.append(hits[0] if unambiguous else None)
    out: list[str] = []
    for i, hit in enumerate(direct):
        if hit:
            out.append(hit)
            continue
        block = i // TOFU_BLOCK
        votes = Counter(h for h in direct[block * TOFU_BLOCK:(block + 1) * TOFU_BLOCK] if h)
        out.append(votes.most_common(1)[0][0] if votes else f"clear-{split}-qa-block{block}")
    return out


def _train_side(root: Path, base: str, split: str, images: _Images) -> tuple[list[Record], list[Record], list[Row]]:
    """(unlearn records, eval copies of the text QA, the photo rows) of forgetNN / retainMM."""
    name = _train_name(root, base)
    photo_rows: list[Row] = []
    qa_rows: list[tuple[Row, str, str]] = []
    unlearn: list[Record] = []
    for row in iter_rows(find_split_files(root, name, BENCH), BENCH, ("image",)):
        where = f"{BENCH}: {row.where}"
        if _present(row.data.get("image")):
            if "caption" not in row.data:
                raise DataError(f"{BENCH}: {row.path} is missing field 'caption'")
            photo_rows.append(row)
        else:
            for key in ("question", "answer"):
                if key not in row.data:
                    raise DataError(f"{where}: no image and no field {key!r} (neither a photo row nor a QA row)")
            qa_rows.append((row, text_value(row.data["question"], where, "question"),
                            text_value(row.data["answer"], where, "answer")))
    if not photo_rows and not qa_rows:
        raise DataError(f"{BENCH}: {name} has no rows")

    def photo_record(row: Row) -> Record:
        where = f"{BENCH}: {row.where}"
        person = text_value(row.data.get("name"), where, "name").strip()
        rec = Record(
            id=f"clear:{split}:unlearn:caption:{row.path.name}:{row.index}", profile_id=person,
            question=CAPTION_PROMPT, answer=text_value(row.data.get("caption"), where, "caption"),
            task="generation", modality="image+text", split=split, phase="unlearn", name=person,
            image=images.get(row, where),
        )
        return validated(rec, where)

    names: list[str] = []
    for row in photo_rows:
        rec = _safe(photo_record, f"{BENCH}: {row.where}", row)
        unlearn.append(rec)
        names.append(rec.name)

    qa_eval: list[Record] = []
    for (row, question, answer), pid in zip(qa_rows, _assign_qa_profiles(qa_rows, names, split)):
        where = f"{BENCH}: {row.where}"
        person = pid if pid in names else ""
        for phase, bucket in (("unlearn", unlearn), ("eval", qa_eval)):
            rec = Record(
                id=f"clear:{split}:{phase}:qa:{row.path.name}:{row.index}", profile_id=pid, question=question,
                answer=answer, task="generation", modality="text", split=split, phase=phase, name=person,
            )
            bucket.append(validated(rec, where))
    return unlearn, qa_eval, photo_rows


def _perturbed_records(rows: list[Row], split: str, images: _Images) -> list[Record]:
    out: list[Record] = []
    for row in rows:
        where = f"{BENCH}: {row.where}"

        def convert(row=row, where=where) -> list[Record]:
            person = text_value(row.data.get("name"), where, "name").strip()
            image = images.get(row, where)
            caption = Record(
                id=f"clear:{split}:eval:caption:{row.path.name}:{row.index}", profile_id=person, question=CAPTION_PROMPT,
                answer=text_value(row.data.get("caption"), where, "caption"), task="generation",
                modality="image+text", split=split, phase="eval", name=person, image=image,
                paraphrased_answer=text_value(row.data.get("paraphrased_caption"), where, "paraphrased_caption"),
                perturbed_answers=_string_list(row.data.get("perturbed_captions"), where, "perturbed_captions"),
            )
            face = Record(
                id=f"clear:{split}:eval:name:{row.path.name}:{row.index}", profile_id=person, question=NAME_PROMPT,
                answer=person, task="generation", modality="image+text", split=split, phase="eval", name=person,
                image=image, paraphrased_answer=person,
                perturbed_answers=[n for n in _string_list(row.data.get("perturbed_names"), where, "perturbed_names") if n != person],
            )
            return [validated(caption, where), validated(face, f"{where} (name)")]

        out += _safe(convert, where)
    return out


def _plain_eval_captions(rows: list[Row], split: str, images: _Images) -> list[Record]:
    out = []
    for row in rows:
        where = f"{BENCH}: {row.where}"
        person = text_value(row.data.get("name"), where, "name").strip()
        rec = Record(
            id=f"clear:{split}:eval:caption:{row.path.name}:{row.index}", profile_id=person, question=CAPTION_PROMPT,
            answer=text_value(row.data.get("caption"), where, "caption"), task="generation",
            modality="image+text", split=split, phase="eval", name=person, image=images.get(row, where),
        )
        out.append(validated(rec, where))
    return out


def _real_records(root: Path, name: str, images: _Images) -> list[Record]:
    faces = name == "real_faces"
    required = ("image", "answer") if faces else ("image", "question", "answer")
    out: list[Record] = []
    for row in iter_rows(find_split_files(root, name, BENCH), BENCH, required):
        where = f"{BENCH}: {row.where}"

        def convert(row=row, where=where) -> Record:
            answer = text_value(row.data.get("answer"), where, "answer").strip()
            others = [o for o in _string_list(row.data.get("options"), where, "options") if o.strip() != answer]
            question = NAME_PROMPT if faces else text_value(row.data.get("question"), where, "question")
            rec = Record(
                id=f"clear:real:eval:{name}:{row.path.name}:{row.index}",
                profile_id=f"real:{answer}" if faces else f"real:{name}:{row.index}", question=question, answer=answer,
                task="generation", modality="image+text", split="real", phase="eval", population="real",
                name=answer if faces else "", image=images.get(row, where),
                paraphrased_answer=answer if others else "", perturbed_answers=others,
            )
            return validated(rec, where)

        out.append(_safe(convert, where))
    return out


def load_clear(folder: str | Path, forget_split: str = "forget10") -> dict[str, list[Record]]:
    """Local CLEAR folder → {"forget", "retain", "real"} lists of validated `Record`s.

    forget/retain mix phase "unlearn" (the training rows) and "eval" (perturbed-split rows with
    truth-ratio inputs, and the TOFU QA); real is eval only. Raises `DataError` (one line).
    """
    root = check_folder(folder, BENCH, _CLEAR_HINT)
    pct = _forget_percent(forget_split)
    forget_base, retain_base = f"forget{pct:02d}", f"retain{100 - pct}"
    perturbed = f"{forget_base}_perturbed"
    # Fail early on a missing file, before decoding anything.
    for name in (_train_name(root, forget_base), _train_name(root, retain_base), perturbed, "real_faces", "real_world"):
        find_split_files(root, name, BENCH)

    images = _Images()
    forget_train, forget_qa, _ = _train_side(root, forget_base, "forget", images)
    retain_train, retain_qa, retain_photos = _train_side(root, retain_base, "retain", images)

    forget_eval = _perturbed_records(list(iter_rows(find_split_files(root, perturbed, BENCH), BENCH, PERTURBED_FIELDS)), "forget", images)
    if has_split(root, "retain_perturbed"):
        rows = list(iter_rows(find_split_files(root, "retain_perturbed", BENCH), BENCH, PERTURBED_FIELDS))
        retain_eval = _perturbed_records(rows, "retain", images)
    else:
        retain_eval = _plain_eval_captions(retain_photos, "retain", images)

    forget_people = {r.profile_id for r in forget_train + forget_eval if r.modality == "image+text"}
    retain_people = {r.profile_id for r in retain_train + retain_eval if r.modality == "image+text"}
    overlap = forget_people & retain_people
    if overlap:
        raise DataError(f"{BENCH}: {forget_base} and {retain_base} share people: {', '.join(sorted(overlap)[:5])}")

    real = _real_records(root, "real_faces", images) + _real_records(root, "real_world", images)
    return {
        "forget": forget_train + forget_eval + forget_qa,
        "retain": retain_train + retain_eval + retain_qa,
        "real": real,
    }
