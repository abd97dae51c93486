"""Your own people: a JSON-lines file, a CSV file or an image folder → `Record`s.

Why: the synthetic world and the two benchmarks cover research; a user who must make a model forget
*their* people has a table of questions about them. One row per question, read with `datasets`
(the ``json`` and ``csv`` builders), so anything `datasets` reads as a table works.

Columns (unknown columns are ignored):

* ``person_id`` (required) — who the question is about; ``--forget-ids`` chooses among these.
* ``question``, ``answer`` (required) — for classification ``answer`` may be left out when
  ``answer_index`` is given (or be the option's text or letter).
* ``image`` — a path relative to the file (an image folder: relative to the folder); with it the
  question is image+text (the photo is shown), without it text-only. ``file_name`` (the
  ``imagefolder`` name) is accepted too.
* ``name`` — the person's name (used by the identity-ranking attack).
* ``task`` — ``generation`` | ``classification`` | ``cloze``; when absent: ``classification`` if
  ``options`` are given, else ``generation``.
* ``options`` (2–4 strings) + ``answer_index`` (0-based) — classification. In CSV: a JSON list
  (``["a", "b"]``) or ``a|b|c``.
* ``paraphrased_answer``, ``perturbed_answers`` (list; CSV as for options) — the truth ratio.
* ``phase`` — ``train`` (only trained on), ``eval`` (only evaluated) or ``both`` (default): a row
  is a training record (fine-tuning, unlearning) *and* an evaluation record unless it says otherwise.
* ``id`` — a record id (default ``own:<person_id>:<row>``).

A folder is read in the ``imagefolder`` layout: its ``metadata.jsonl`` / ``metadata.csv`` with
image paths relative to the folder. (The metadata file is read with the json/csv builder rather than
the imagefolder one, which wants one row per image: here a photo serves many questions, and
text-only rows have none.)

Row numbers in errors are 1-based data rows (the line of a JSON-lines file; the CSV row after the
header). Every problem is one `DataError` line naming file, row and field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DataError
from .mllmu import decode_image
from .record import OPTION_LETTERS, TASKS, Record, RecordError

SOURCE = "own"
FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv"}
METADATA_FILES = ("metadata.jsonl", "metadata.json", "metadata.csv")
REQUIRED = ("person_id", "question")
PHASES = ("train", "eval", "both")
LIST_FIELDS = ("options", "perturbed_answers")


def own_data_file(path: str | Path) -> Path | None:
    """The table to read if `path` is own data (a .jsonl/.json/.csv file, or a folder holding a
    metadata file), else None — worlds and benchmark folders are recognised elsewhere."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in FILE_SUFFIXES:
        return path
    if path.is_dir():
        for name in METADATA_FILES:
            if (path / name).is_file():
                return path / name
    return None


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a json/csv file through `datasets`; CSV columns are all read as text (a person id
    "007" stays "007") with empty cells as missing."""
    import datasets

    datasets.disable_progress_bars()
    builder = FILE_SUFFIXES[path.suffix.lower()]
    try:
        if not path.read_bytes().strip():
            raise DataError(f"{path}: the file is empty (expected one row per question: person_id, question, "
                            "answer)")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None
    if path.suffix.lower() == ".jsonl":
        _check_json_lines(path)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the CSV header ({exc})") from None
        if not header:
            raise DataError(f"{path}: empty CSV file (expected a header with person_id, question, answer)")
        kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                  "keep_default_na": False}
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets/pyarrow raise many types for malformed files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable {builder.upper()} table ({type(exc).__name__}: {first})") from None
    rows = [dict(r) for r in ds]
    if builder == "csv":
        rows = [{k: (None if v == "" else v) for k, v in r.items()} for r in rows]
    return rows


def _check_json_lines(path: Path) -> None:
    """Each non-empty line of a JSON-lines file is one JSON object: the first that is not is named by its line
    number (the reader behind `datasets` reports only that some row failed)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number}: expected a JSON object {{...}}, got {type(row).__name__}")


def _text(row: dict, key: str, where: str, required: bool = False) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{where}: field '{key}' is missing or empty")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{key}' is not text ({type(value).__name__})")
    return str(value).strip()


def _str_list(row: dict, key: str, where: str) -> list[str]:
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise DataError(f"{where}: field '{key}' is not a valid JSON list") from None
        else:
            value = [part.strip() for part in text.split("|")] if text else []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise DataError(f"{where}: field '{key}' must be a list of strings")
    return [str(v).strip() for v in value]


def _answer_index(row: dict, where: str) -> int | None:
    value = row.get("answer_index")
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'answer_index' is not an integer ({value!r})") from None


def _classification(row: dict, where: str, options: list[str], answer: str) -> tuple[int, str]:
    """(answer_index, answer text) from answer_index and/or answer (option text or letter)."""
    if not 2 <= len(options) <= len(OPTION_LETTERS):
        raise DataError(f"{where}: field 'options' needs 2 to {len(OPTION_LETTERS)} options, got {len(options)}")
    idx = _answer_index(row, where)
    if idx is not None:
        if not 0 <= idx < len(options):
            raise DataError(f"{where}: field 'answer_index' {idx} is outside the {len(options)} options (0-based)")
        if answer and answer not in (options[idx], OPTION_LETTERS[idx]):
            raise DataError(f"{where}: field 'answer' {answer!r} disagrees with answer_index {idx} "
                            f"({options[idx]!r})")
        return idx, options[idx]
    if not answer:
        raise DataError(f"{where}: field 'answer' is missing or empty (or give 'answer_index')")
    if answer in options:
        return options.index(answer), answer
    letter = answer.rstrip(".)").upper()
    if len(letter) == 1 and letter in OPTION_LETTERS[: len(options)]:
        idx = OPTION_LETTERS.index(letter)
        return idx, options[idx]
    raise DataError(f"{where}: field 'answer' {answer!r} is none of the options (give 'answer_index')")


def row_records(row: dict, number: int, path: Path, base: Path, images: dict[str, Image.Image]) -> list[Record]:
    """One table row → its records: a training one (phase "unlearn"), an evaluation one, or both."""
    where = f"{path} row {number}"
    for key in REQUIRED:
        _text(row, key, where, required=True)
    pid = _text(row, "person_id", where, required=True)
    question = _text(row, "question", where, required=True)
    options = _str_list(row, "options", where)
    task = _text(row, "task", where) or ("classification" if options else "generation")
    if task not in TASKS:
        raise DataError(f"{where}: field 'task' {task!r} is not one of {', '.join(TASKS)}")
    answer = _text(row, "answer", where)
    idx = -1
    if task == "classification":
        if not options:
            raise DataError(f"{where}: field 'options' is missing (classification needs 2 to 4 options)")
        idx, answer = _classification(row, where, options, answer)
    elif options:
        raise DataError(f"{where}: field 'options' is given but task is {task!r} (options are for classification)")
    elif not answer:
        raise DataError(f"{where}: field 'answer' is missing or empty")
    phase = (_text(row, "phase", where) or "both").lower()
    if phase not in PHASES:
        raise DataError(f"{where}: field 'phase' {phase!r} is not one of {', '.join(PHASES)}")
    image_key = "image" if row.get("image") is not None else "file_name"
    image = None
    if row.get(image_key) is not None:
        value = row[image_key]
        if isinstance(value, str):
            key = value.strip()
            if key not in images:
                images[key] = decode_image(key, f"{where}: field '{image_key}'", base)
            image = images[key]
        else:
            image = decode_image(value, f"{where}: field '{image_key}'", base)
    rec = Record(
        id=_text(row, "id", where) or f"{SOURCE}:{pid}:{number}", profile_id=pid, question=question, answer=answer,
        task=task, modality="image+text" if image is not None else "text", phase="eval", name=_text(row, "name", where),
        image=image, options=options, answer_index=idx,
        paraphrased_answer=_text(row, "paraphrased_answer", where),
        perturbed_answers=_str_list(row, "perturbed_answers", where),
    )
    try:
        rec.validate()
    except RecordError as err:
        raise DataError.from_record_error(err, where) from None
    out = []
    if phase in ("train", "both"):
        out.append(replace(rec, id=rec.id + ":train", phase="unlearn", options=list(options),
                           perturbed_answers=list(rec.perturbed_answers)))
    if phase in ("eval", "both"):
        out.append(rec)
    return out


def load_own(path: str | Path) -> list[Record]:
    """Every record of an own-data file or folder, validated; raises a one-line `DataError`."""
    path = Path(path)
    table = own_data_file(path)
    if table is None:
        raise DataError(f"{path}: own data is a .jsonl, .json or .csv file, or a folder with "
                        f"{' / '.join(METADATA_FILES)}")
    base = path if path.is_dir() else path.parent
    rows = _read_table(table)
    if not rows:
        raise DataError(f"{table}: no rows")
    columns = set().union(*(r.keys() for r in rows))
    for key in REQUIRED:
        if key not in columns:
            raise DataError(f"{table}: no column '{key}' (own data needs person_id, question, answer)")
    images: dict[str, Image.Image] = {}
    records: list[Record] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        for rec in row_records(row, i, table, base, images):
            if rec.id in seen:
                raise DataError(f"{table} row {i}: field 'id' {rec.id!r} is used by an earlier row")
            seen.add(rec.id)
            records.append(rec)
    return records
