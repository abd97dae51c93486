"""CLEAR (character unlearning in textual and visual modalities) from a local folder → `Record`s.

Nothing is fetched: `folder` is a local copy of the released dataset (Hugging Face dataset
``therem/CLEAR``, e.g. a git clone): one folder per config holding ``train-XXXXX-of-YYYYY.parquet``
shards (``full`` has 2, ``full+tofu`` 3, the default config sits in ``data/``). ``NAME.parquet`` and
``NAME-*.parquet`` beside the folder are accepted too. Images are ``{bytes, path}`` structs.

What the release holds, and what the loader reads (columns are read by name, so the column order,
which differs between the ``*_perturbed`` configs, does not matter):

* ``forgetNN`` / ``retainMM`` (NN = 01, 05, 10; MM = 100 - NN) — ``image, caption, name``: the
  photos of the fictitious (TOFU) authors. Forget sets are nested (forget01 ⊂ forget05 ⊂ forget10)
  and retainMM is everyone else. **Required.**
* ``forgetNN+tofu`` / ``retainMM+tofu`` — ``image, caption, question, answer`` and **no name**: the
  same photo rows first, then TOFU's text-only question/answer rows with a null image. Only the
  QA rows are taken from here (the text side). Optional: without them the text cells are absent
  and a warning names the missing folders.
* ``forgetNN_perturbed`` (**required**) / ``retain_perturbed`` (optional) — ``image, caption, name,
  perturbed_captions[], paraphrased_caption, perturbed_names[]``: the evaluation photos. They are
  rows of their own (``forget10_perturbed`` has one row fewer than ``forget10``), never aligned
  with forgetNN by position.
* ``real_faces`` — ``image, answer, options[]`` (a celebrity's photo and name) and ``real_world`` —
  ``question, answer, options, image``: knowledge the model had before. **Required.**
* ``full`` / ``full+tofu`` / ``data`` are the fine-tuning sets; only ``full`` (else ``data``) is
  read, its ``name`` column alone, to check that forget and retain together are everyone.

How people are matched across files (CLEAR has no person id column):

* photo rows carry ``name``; it is the profile id.
* a TOFU QA row of ``+tofu`` gets the author whose full name its question or answer mentions
  (the longest name that matches, when no other name matches elsewhere in the text); a row that
  names nobody gets the majority author of its block of 20 (TOFU stores 20 QA per author, in
  order); a block that names nobody becomes ``clear-<split>-qa-block<k>`` and is reported.
* The photo rows of ``+tofu`` are *not* matched to forgetNN's: not by position (the two configs were
  uploaded at different times), not by image bytes (re-encoding on upload changes them). Their
  captions are only compared with forgetNN's as a multiset, and a difference is a warning.
* TOFU's perturbed files (``--tofu DIR``) are matched to the ``+tofu`` QA rows by their
  (question, answer) text, whitespace and case normalised, else by the question alone when that
  is unique. TOFU rows that match nothing are skipped with a warning (TOFU's releases differ by a
  few lines); none matching at all (the wrong folder), or a forget author's question in
  ``retain_perturbed``, is an error.

The text side's truth ratio needs paraphrased and perturbed answers, which CLEAR does not ship:
the authors take them from TOFU. With ``tofu`` (a local TOFU folder in its released layout:
``forgetNN_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``, ``world_facts_perturbed``
as ``NAME.json`` JSON lines — TOFU's own files — or ``NAME.parquet`` / ``NAME/**/*.parquet``, columns
``question, answer, paraphrased_answer, perturbed_answer[]``; the two real sets may lack
``paraphrased_answer``, their base answer is ``answer`` as in TOFU's evaluation) the text eval
records get them and the real-authors / world-facts sets are added. Without it every cell whose
metric is missing says why in `ClearData.notes`, and one warning line says it.

Mapping to our splits (every record validated; any problem is a one-line `DataError`). The cells
the CLEAR authors report apart stay apart (split × modality):

* ``forget`` / ``retain`` — phase ``unlearn``: each forgetNN / retainMM photo (question
  `CAPTION_PROMPT`, answer its caption) and each TOFU QA row (text). Phase ``eval``: image+text =
  captioning of the ``*_perturbed`` photos (truth ratio from paraphrased / perturbed captions;
  without ``retain_perturbed`` the retain photos again, without truth ratio); text = the TOFU QA
  rows (truth ratio from ``--tofu``).
* ``forget_faces`` / ``retain_faces`` — face → name recognition on the same ``*_perturbed`` photos
  (`NAME_PROMPT`, answer the name, perturbed answers = perturbed_names), eval only.
* ``real`` — image+text = ``real_faces`` (`NAME_PROMPT`); text = TOFU's real authors.
* ``real_world`` — image+text = CLEAR's ``real_world``; text = TOFU's world facts.
  ``options`` other than the answer are the perturbed answers (base answer = the answer).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from .errors import DataError
from .mllmu import (
    Row, _is_lfs_pointer, _safe, check_folder, decode_image, find_split_files, has_split, iter_rows, text_value,
    validated,
)
from .record import Record

BENCH = "CLEAR"
TOFU = "TOFU"
FORGET_PERCENTS = (1, 5, 10)
CAPTION_PROMPT = "Describe the person in this image."
NAME_PROMPT = "What is the name of the person in this image?"
TOFU_BLOCK = 20
PHOTO_FIELDS = ("image", "caption", "name")
TOFU_QA_FIELDS = ("image", "question", "answer")
PERTURBED_FIELDS = ("image", "caption", "name", "paraphrased_caption", "perturbed_captions", "perturbed_names")
TOFU_PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
TOFU_REAL_FIELDS = ("question", "answer", "perturbed_answer")
FACES = {"forget": "forget_faces", "retain": "retain_faces"}
SPLIT_ORDER = ("forget", "forget_faces", "retain", "retain_faces", "real", "real_world")
_CLEAR_HINT = (
    "put a local copy of the released CLEAR dataset there (Hugging Face dataset therem/CLEAR: folders "
    "forget01/05/10, retain99/95/90, forgetNN_perturbed, real_faces, real_world; optional forgetNN+tofu, "
    "retainMM+tofu, retain_perturbed)"
)


@dataclass
class ClearData:
    """What `load_clear` returns: the records per split, plus why some cells lack a metric.

    `notes` maps a cell ``"split/modality"`` to a one-line reason (a missing truth ratio, a missing
    text side); `warnings` are one-line messages for the user (printed by `store.load_data`)."""

    splits: dict[str, list[Record]]
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


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
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field {field_name!r} must be a list of strings")
    return [text_value(v, where, f"{field_name}[{i}]") for i, v in enumerate(value)]


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _person(row: Row, where: str) -> str:
    person = text_value(row.data.get("name"), where, "name").strip()
    if not person:
        raise DataError(f"{where}: field 'name' is empty")
    return person


class _Images:
    """Decode each photo once; the same PIL object is shared by the records that show it."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, int], Image.Image] = {}

    def get(self, row: Row, where: str) -> Image.Image:
        key = (str(row.path), row.index)
        if key not in self.cache:
            self.cache[key] = decode_image(row.data.get("image"), where, row.path.parent)
        return self.cache[key]


def _rows(root: Path, name: str, required: tuple[str, ...]) -> Iterator[Row]:
    return iter_rows(find_split_files(root, name, BENCH), BENCH, required)


# ------------------------------------------------------------------------------------------------
# forgetNN / retainMM: photos and names
# ------------------------------------------------------------------------------------------------


def _photos(root: Path, config: str, split: str, images: _Images) -> tuple[list[Record], list[str]]:
    """Unlearn-phase caption records of a photo config and its people (in order of appearance)."""
    records: list[Record] = []
    for row in _rows(root, config, PHOTO_FIELDS):
        where = f"{BENCH}: {row.where}"

        def convert(row=row, where=where) -> Record:
            person = _person(row, where)
            rec = Record(
                id=f"clear:{split}:unlearn:caption:{config}/{row.path.name}:{row.index}", profile_id=person,
                question=CAPTION_PROMPT, answer=text_value(row.data.get("caption"), where, "caption"),
                task="generation", modality="image+text", split=split, phase="unlearn", name=person,
                image=images.get(row, where),
            )
            return validated(rec, where)

        records.append(_safe(convert, where))
    if not records:
        raise DataError(f"{BENCH}: {config} has no rows")
    return records, list(dict.fromkeys(r.profile_id for r in records))


# ------------------------------------------------------------------------------------------------
# forgetNN+tofu / retainMM+tofu: the text side
# ------------------------------------------------------------------------------------------------


def _assign_qa_profiles(qa: list[tuple[str, str, str]], names: list[str], split: str) -> list[str]:
    """Profile id per TOFU QA row (question, answer, name-or-""): its own name, a full name it
    mentions, else its block's majority, else a block id."""
    longest_first = sorted({n for n in names if n}, key=len, reverse=True)
    direct: list[str | None] = []
    for question, answer, own in qa:
        if own:
            direct.append(own)
            continue
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


@dataclass
class _TextSide:
    unlearn: list[Record]
    eval: list[Record]
    photo_captions: list[str]
    unmatched_blocks: int


def _text_side(root: Path, config: str, split: str, names: list[str]) -> _TextSide:
    photo_captions: list[str] = []
    qa: list[tuple[Row, str, str, str]] = []
    for row in _rows(root, config, TOFU_QA_FIELDS):
        where = f"{BENCH}: {row.where}"
        if _present(row.data.get("image")):
            caption = row.data.get("caption")
            photo_captions.append(caption if isinstance(caption, str) else "")
            continue
        own = row.data.get("name")  # not in the release; used if a future export adds it
        qa.append((row, text_value(row.data.get("question"), where, "question"),
                   text_value(row.data.get("answer"), where, "answer"), own.strip() if isinstance(own, str) else ""))
    if not qa:
        raise DataError(f"{BENCH}: {config} has no question/answer rows (rows with a null image)")
    pids = _assign_qa_profiles([(q, a, own) for _row, q, a, own in qa], names, split)
    unlearn: list[Record] = []
    evals: list[Record] = []
    for (row, question, answer, _own), pid in zip(qa, pids):
        where = f"{BENCH}: {row.where}"
        person = pid if pid in names else ""
        for phase, bucket in (("unlearn", unlearn), ("eval", evals)):
            rec = Record(
                id=f"clear:{split}:{phase}:qa:{config}/{row.path.name}:{row.index}", profile_id=pid,
                question=question, answer=answer, task="generation", modality="text", split=split, phase=phase,
                name=person,
            )
            bucket.append(validated(rec, where))
    unmatched = len({p for p in pids if p.startswith(f"clear-{split}-qa-block")})
    return _TextSide(unlearn, evals, photo_captions, unmatched)


# ------------------------------------------------------------------------------------------------
# forgetNN_perturbed / retain_perturbed: the evaluation photos
# ------------------------------------------------------------------------------------------------


def _perturbed(root: Path, config: str, split: str, images: _Images, people: set[str], others: set[str],
               people_from: str) -> tuple[list[Record], list[Record]]:
    """(caption records, face → name records) of a perturbed config; every person must be one of `people`."""
    captions: list[Record] = []
    faces: list[Record] = []
    for row in _rows(root, config, PERTURBED_FIELDS):
        where = f"{BENCH}: {row.where}"

        def convert(row=row, where=where) -> tuple[Record, Record]:
            person = _person(row, where)
            if person not in people:
                side = "the forget set" if split == "retain" else "the retain set"
                why = f"who is in {side}" if person in others else f"who is not in {people_from}"
                raise DataError(f"{where}: the photo is of {person!r}, {why}")
            image = images.get(row, where)
            tag = f"{config}/{row.path.name}:{row.index}"
            caption = Record(
                id=f"clear:{split}:eval:caption:{tag}", profile_id=person, question=CAPTION_PROMPT,
                answer=text_value(row.data.get("caption"), where, "caption"), task="generation",
                modality="image+text", split=split, phase="eval", name=person, image=image,
                paraphrased_answer=text_value(row.data.get("paraphrased_caption"), where, "paraphrased_caption"),
                perturbed_answers=_string_list(row.data.get("perturbed_captions"), where, "perturbed_captions"),
            )
            wrong = [n for n in _string_list(row.data.get("perturbed_names"), where, "perturbed_names")
                     if n.strip() != person]
            face = Record(
                id=f"clear:{FACES[split]}:eval:name:{tag}", profile_id=person, question=NAME_PROMPT,
                answer=person, task="generation", modality="image+text", split=FACES[split], phase="eval",
                name=person, image=image, paraphrased_answer=person if wrong else "", perturbed_answers=wrong,
            )
            return validated(caption, where), validated(face, f"{where} (name)")

        caption, face = _safe(convert, where)
        captions.append(caption)
        faces.append(face)
    return captions, faces


def _plain_eval_captions(photos: list[Record], split: str) -> list[Record]:
    """Retain evaluation without retain_perturbed: the retain photos again, no truth-ratio inputs."""
    out = []
    for r in photos:
        rec = Record(
            id=r.id.replace(":unlearn:", ":eval:", 1), profile_id=r.profile_id, question=r.question, answer=r.answer,
            task=r.task, modality=r.modality, split=split, phase="eval", name=r.name, image=r.image,
        )
        out.append(rec.validate())
    return out


# ------------------------------------------------------------------------------------------------
# real_faces / real_world
# ------------------------------------------------------------------------------------------------


def _real_records(root: Path, config: str, images: _Images) -> list[Record]:
    faces = config == "real_faces"
    split = "real" if faces else "real_world"
    required = ("image", "answer") if faces else ("image", "question", "answer")
    out: list[Record] = []
    for row in _rows(root, config, required):
        where = f"{BENCH}: {row.where}"

        def convert(row=row, where=where) -> Record:
            answer = text_value(row.data.get("answer"), where, "answer").strip()
            others = [o for o in _string_list(row.data.get("options"), where, "options") if o.strip() != answer]
            question = NAME_PROMPT if faces else text_value(row.data.get("question"), where, "question")
            rec = Record(
                id=f"clear:{split}:eval:{config}/{row.path.name}:{row.index}",
                profile_id=f"real:{answer}" if faces else f"real_world:{row.index}", question=question,
                answer=answer, task="generation", modality="image+text", split=split, phase="eval",
                population="real", name=answer if faces else "", image=images.get(row, where),
                paraphrased_answer=answer if others else "", perturbed_answers=others,
            )
            return validated(rec, where)

        out.append(_safe(convert, where))
    if not out:
        raise DataError(f"{BENCH}: {config} has no rows")
    return out


# ------------------------------------------------------------------------------------------------
# TOFU (optional): the text side's truth-ratio inputs and the real authors / world facts
# ------------------------------------------------------------------------------------------------

_TOFU_SUFFIXES = (".json", ".jsonl", ".parquet")


def tofu_files(root: Path, name: str) -> list[Path]:
    """TOFU's file(s) for `name`: NAME.json (the release, JSON lines), NAME.jsonl, NAME.parquet,
    NAME/**/*.{parquet,json,jsonl} (the hub's parquet export) or NAME-*.parquet."""
    for suffix in _TOFU_SUFFIXES:
        single = root / f"{name}{suffix}"
        if single.is_file():
            return [single]
    sub = root / name
    if sub.is_dir():
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix in _TOFU_SUFFIXES)
        if files:
            return files
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and p.name.startswith(f"{name}-") and p.suffix == ".parquet")
    if files:
        return files
    raise DataError(
        f"{TOFU}: no file for {name!r} in {root}: put TOFU's {name}.json there (as released in locuslab/TOFU) "
        f"or {name}/*.parquet"
    )


def _tofu_rows(files: list[Path], required: tuple[str, ...]) -> Iterator[Row]:
    for path in files:
        if path.suffix == ".parquet":
            yield from iter_rows([path], TOFU, required)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{TOFU}: {path} cannot be read ({type(exc).__name__}: {exc})") from None
        stripped = text.lstrip()
        if stripped.startswith("["):  # a JSON array
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise DataError(f"{TOFU}: {path} is not valid JSON ({exc})") from None
            numbered = list(enumerate(items))
        else:  # JSON lines, TOFU's own format
            numbered = []
            for i, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
                try:
                    numbered.append((i, json.loads(line)))
                except ValueError as exc:
                    raise DataError(f"{TOFU}: {path} row {i} is not valid JSON ({exc})") from None
        for i, item in numbered:
            if not isinstance(item, dict):
                raise DataError(f"{TOFU}: {path} row {i} is not an object")
            for key in required:
                if key not in item:
                    raise DataError(f"{TOFU}: {path} row {i} is missing field {key!r} "
                                    f"(it has: {', '.join(item) or 'nothing'})")
            yield Row(path, i, item)


def _tofu_answers(row: Row, where: str, paraphrase_required: bool) -> tuple[str, str, list[str]]:
    """(answer, base answer, perturbed answers). The real sets' base answer is `answer` when they have no
    paraphrase (TOFU's own evaluation uses `answer` there); the forget/retain sets must have one."""
    answer = text_value(row.data.get("answer"), where, "answer")
    base = row.data.get("paraphrased_answer")
    para = text_value(base, where, "paraphrased_answer") if base is not None or paraphrase_required else answer
    perts = [p for p in _string_list(row.data.get("perturbed_answer"), where, "perturbed_answer")
             if _norm(p) != _norm(answer)]
    return answer, para, perts


def _enrich(qa_eval: list[Record], files: list[Path], name: str, config: str, other_keys: set[str],
            warnings: list[str]) -> int:
    """Give the QA eval records TOFU's paraphrased / perturbed answers; returns how many got them.

    A TOFU row about a person of the other side (a forget question in retain_perturbed) is an error;
    rows that match no question are skipped with a warning (TOFU's releases differ by a few lines),
    unless none matches at all (the wrong folder)."""
    by_pair: dict[tuple[str, str], list[Record]] = {}
    by_question: dict[str, list[Record]] = {}
    for r in qa_eval:
        by_pair.setdefault((_norm(r.question), _norm(r.answer)), []).append(r)
        by_question.setdefault(_norm(r.question), []).append(r)
    unmatched: list[tuple[str, str]] = []
    rows = 0
    for row in _tofu_rows(files, TOFU_PERTURBED_FIELDS):
        where = f"{TOFU}: {row.where}"
        rows += 1

        def apply(row=row, where=where) -> None:
            question = text_value(row.data.get("question"), where, "question")
            answer, para, perts = _tofu_answers(row, where, True)
            targets = by_pair.get((_norm(question), _norm(answer)))
            if not targets:
                same_q = by_question.get(_norm(question), [])
                targets = same_q if len({_norm(r.answer) for r in same_q}) == 1 else None
            if not targets:
                if _norm(question) in other_keys:
                    raise DataError(f"{where}: question {question[:80]!r} is a question of the forget set, "
                                    f"not of {config}")
                unmatched.append((where, question))
                return
            for rec in targets:
                rec.paraphrased_answer, rec.perturbed_answers = (para, list(perts)) if perts else ("", [])

        _safe(apply, where)
    if unmatched and len(unmatched) == rows:
        where, question = unmatched[0]
        raise DataError(f"{where}: question {question[:80]!r} is not among {config}'s TOFU rows, nor is any other "
                        f"row of {name}: --tofu must be the TOFU release this CLEAR folder was built from")
    if unmatched:
        warnings.append(f"{TOFU}: {len(unmatched)} of {name}'s {rows} rows match no question of {config} and are "
                        f"skipped (first: {unmatched[0][0]})")
    return sum(1 for r in qa_eval if r.paraphrased_answer and r.perturbed_answers)


def _tofu_real(files: list[Path], name: str, split: str) -> list[Record]:
    out: list[Record] = []
    for row in _tofu_rows(files, TOFU_REAL_FIELDS):
        where = f"{TOFU}: {row.where}"

        def convert(row=row, where=where) -> Record:
            question = text_value(row.data.get("question"), where, "question")
            answer, para, perts = _tofu_answers(row, where, False)
            rec = Record(
                id=f"tofu:{split}:eval:{name}/{row.path.name}:{row.index}",
                profile_id=f"{split}:{name}:{row.index}", question=question, answer=answer, task="generation",
                modality="text", split=split, phase="eval", population="real",
                paraphrased_answer=para if perts else "", perturbed_answers=perts,
            )
            return validated(rec, where)

        out.append(_safe(convert, where))
    if not out:
        raise DataError(f"{TOFU}: {name} has no rows")
    return out


# ------------------------------------------------------------------------------------------------
# partition check against `full` (name column only)
# ------------------------------------------------------------------------------------------------


def _partition_warning(root: Path, forget: set[str], retain: set[str], forget_config: str,
                       retain_config: str) -> str | None:
    import pyarrow.parquet as pq

    config = next((c for c in ("full", "data") if has_split(root, c)), None)
    if config is None:
        return None
    everyone: set[str] = set()
    for path in find_split_files(root, config, BENCH):
        try:
            pf = pq.ParquetFile(path)
            if "name" not in pf.schema_arrow.names:
                return None  # an export without names: nothing to compare
            for batch in pf.iter_batches(columns=["name"], batch_size=4096):
                everyone.update(n.strip() for n in batch.column(0).to_pylist() if isinstance(n, str))
        except Exception as exc:  # pyarrow raises several types for damaged files
            if _is_lfs_pointer(path):
                raise DataError(f"{BENCH}: {path} is a Git LFS pointer, not the parquet file: run `git lfs pull` "
                                "in the cloned dataset") from None
            raise DataError(f"{BENCH}: {path} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
    left_out = everyone - forget - retain
    unknown = (forget | retain) - everyone
    if not left_out and not unknown:
        return None
    parts = []
    if left_out:
        parts.append(f"{len(left_out)} people of {config} are in neither {forget_config} nor {retain_config} "
                     f"({', '.join(sorted(left_out)[:3])})")
    if unknown:
        parts.append(f"{len(unknown)} are not in {config} ({', '.join(sorted(unknown)[:3])})")
    return f"{BENCH}: {'; '.join(parts)}: is the folder one release?"


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def check_tofu_folder(tofu: str | Path) -> Path:
    root = Path(tofu).expanduser()
    if not root.is_dir():
        raise DataError(
            f"--tofu {root} does not exist or is not a folder: put a local copy of the released TOFU dataset "
            "there (Hugging Face dataset locuslab/TOFU: forgetNN_perturbed.json, retain_perturbed.json, "
            "real_authors_perturbed.json, world_facts_perturbed.json)"
        )
    return root


def load_clear(folder: str | Path, forget_split: str = "forget10", tofu: str | Path | None = None) -> ClearData:
    """Local CLEAR folder (+ optional local TOFU folder) → `ClearData` (records per split, notes, warnings).

    forget/retain mix phase "unlearn" (the training rows) and "eval"; the other splits are eval
    only (see the module docstring). Raises `DataError` (one line) on anything unusable.
    """
    root = check_folder(folder, BENCH, _CLEAR_HINT)
    tofu_root = check_tofu_folder(tofu) if tofu is not None else None
    pct = _forget_percent(forget_split)
    forget_cfg, retain_cfg = f"forget{pct:02d}", f"retain{100 - pct}"
    forget_pert = f"{forget_cfg}_perturbed"
    # Fail early on a missing file, before decoding anything.
    for name in (forget_cfg, retain_cfg, forget_pert, "real_faces", "real_world"):
        find_split_files(root, name, BENCH)
    tofu_sets: dict[str, list[Path]] = {}
    if tofu_root is not None:
        for name in (forget_pert, "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
            tofu_sets[name] = tofu_files(tofu_root, name)

    data = ClearData(splits={})
    notes, warnings = data.notes, data.warnings
    images = _Images()
    forget_photos, forget_people = _photos(root, forget_cfg, "forget", images)
    retain_photos, retain_people = _photos(root, retain_cfg, "retain", images)
    overlap = set(forget_people) & set(retain_people)
    if overlap:
        raise DataError(f"{BENCH}: {forget_cfg} and {retain_cfg} share people: {', '.join(sorted(overlap)[:5])}")
    partition = _partition_warning(root, set(forget_people), set(retain_people), forget_cfg, retain_cfg)
    if partition:
        warnings.append(partition)

    # Text side.
    text: dict[str, _TextSide | None] = {}
    missing_text = []
    for split, cfg, people in (("forget", forget_cfg, forget_people), ("retain", retain_cfg, retain_people)):
        plus = f"{cfg}+tofu"
        if not has_split(root, plus):
            text[split] = None
            missing_text.append(plus)
            notes[f"{split}/text"] = f"absent: no {plus} folder in {root} (CLEAR's TOFU question/answer rows)"
            continue
        side = text[split] = _text_side(root, plus, split, people)
        photos = forget_photos if split == "forget" else retain_photos
        if Counter(side.photo_captions) != Counter(r.answer for r in photos):
            differ = sum((Counter(side.photo_captions) - Counter(r.answer for r in photos)).values())
            warnings.append(f"{BENCH}: {plus}'s {len(side.photo_captions)} photo rows differ from {cfg}'s "
                            f"{len(photos)} ({differ} captions not in {cfg}); photos and names are taken from {cfg}")
        if side.unmatched_blocks:
            warnings.append(f"{BENCH}: {side.unmatched_blocks} block(s) of 20 TOFU questions in {plus} name none of "
                            f"{cfg}'s people; they count as people of their own (clear-{split}-qa-block<k>)")
    if missing_text:
        warnings.append(f"{BENCH}: text side missing: no {', '.join(missing_text)} folder in {root}; "
                        f"the {' and '.join(s + '/text' for s in text if text[s] is None)} cells are absent")

    # Evaluation photos.
    forget_captions, forget_faces = _perturbed(root, forget_pert, "forget", images, set(forget_people),
                                               set(retain_people), forget_cfg)
    if has_split(root, "retain_perturbed"):
        retain_captions, retain_faces = _perturbed(root, "retain_perturbed", "retain", images, set(retain_people),
                                                   set(forget_people), retain_cfg)
    else:
        retain_captions, retain_faces = _plain_eval_captions(retain_photos, "retain"), []
        notes["retain/image+text"] = (f"truth_ratio absent: no retain_perturbed folder in {root} "
                                      f"(captioning of the {retain_cfg} photos instead)")
        notes["retain_faces/image+text"] = f"absent: no retain_perturbed folder in {root}"
        warnings.append(f"{BENCH}: no retain_perturbed folder in {root}: retain captioning has no truth_ratio "
                        "and retain_faces is absent")

    # TOFU: the text truth ratio and the real authors / world facts.
    real_text: list[Record] = []
    world_text: list[Record] = []
    if tofu_root is None:
        for split in ("forget", "retain"):
            if text[split] is not None:
                notes[f"{split}/text"] = ("truth_ratio absent: CLEAR ships no paraphrased/perturbed answers for its "
                                          "TOFU questions; pass --tofu DIR (a local TOFU release)")
        notes["real/text"] = "absent: TOFU's real_authors_perturbed comes from --tofu DIR (none given)"
        notes["real_world/text"] = "absent: TOFU's world_facts_perturbed comes from --tofu DIR (none given)"
        have_text = [f"{s}/text" for s in ("forget", "retain") if text[s] is not None]
        parts = [f"{', '.join(have_text)} have no truth_ratio (CLEAR does not ship TOFU's paraphrased/perturbed "
                 "answers)"] if have_text else []
        parts.append("real/text and real_world/text (TOFU's real authors and world facts) are absent")
        warnings.append(f"{BENCH}: no --tofu folder: {' and '.join(parts)}; "
                        "pass --tofu DIR, a local copy of locuslab/TOFU")
    else:
        forget_keys = {_norm(r.question) for r in (text["forget"].eval if text["forget"] else [])}
        for split, tofu_name, cfg in (("forget", forget_pert, f"{forget_cfg}+tofu"),
                                      ("retain", "retain_perturbed", f"{retain_cfg}+tofu")):
            side = text[split]
            if side is None:
                continue  # the note already says the cell is absent
            got = _enrich(side.eval, tofu_sets[tofu_name], tofu_name, cfg,
                          forget_keys if split == "retain" else set(), warnings)
            if got < len(side.eval):
                notes[f"{split}/text"] = (f"truth_ratio over {got} of {len(side.eval)} questions: the others are not "
                                          f"in TOFU's {tofu_name}")
                if split == "forget":
                    warnings.append(f"{TOFU}: {len(side.eval) - got} of {cfg}'s {len(side.eval)} questions are not in "
                                    f"{tofu_name}: they have no truth_ratio")
        real_text = _tofu_real(tofu_sets["real_authors_perturbed"], "real_authors_perturbed", "real")
        world_text = _tofu_real(tofu_sets["world_facts_perturbed"], "world_facts_perturbed", "real_world")

    def qa(split: str, phase: str) -> list[Record]:
        side = text[split]
        return [] if side is None else (side.unlearn if phase == "unlearn" else side.eval)

    data.splits.update({
        "forget": forget_photos + qa("forget", "unlearn") + forget_captions + qa("forget", "eval"),
        "forget_faces": forget_faces,
        "retain": retain_photos + qa("retain", "unlearn") + retain_captions + qa("retain", "eval"),
        "retain_faces": retain_faces,
        "real": _real_records(root, "real_faces", images) + real_text,
        "real_world": _real_records(root, "real_world", images) + world_text,
    })
    return data


def print_warnings(warnings: list[str]) -> None:
    """One line per warning on stderr (``warning: ...``)."""
    for w in warnings:
        logging.getLogger("mmunlearn").warning("warning: " + " ".join(w.split()))
