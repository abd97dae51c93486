"""MLLMU-Bench from a local folder of its released parquet files → `Record`s.

Nothing is fetched: `folder` is a local copy of the released dataset (Hugging Face dataset
``MLLMMU/MLLMU-Bench``, e.g. a git clone): one folder per config holding hub-named shards
(``forget_10/train-00000-of-00001.parquet``; ``Test_Set`` has two). ``NAME.parquet`` and
``NAME-*.parquet`` beside the folder are accepted too.

The released configs (dataset card; the authors' ``eval.py`` and ``data_process/data_preprocess.py``):

* ``ft_Data``     – the fine-tuning QA, one row per person: ``image, ID, metadata`` where
  ``metadata`` is a JSON string: a list of ``{"ID", "Question", "Answer"}`` objects.
* ``forget_5|10|15`` / ``retain_95|90|85`` – the people of each side of the split, evaluation
  shape: ``image, ID, biography, question, answer, Classification_Task, Generation_Task,
  Mask_Task`` (the reference evaluation reads these files themselves). Their training QA comes
  from ``ft_Data`` by ``ID``; a split file that carries ``metadata`` itself is read as is, and one
  without the evaluation fields takes them from ``Full_Set`` by ``ID``.
* ``Full_Set``    – every fictitious person, evaluation shape (plus ``Directory``).
* ``Test_Set``    – the same questions with transformed photos: an ``images`` *list* instead of ``image``.
* ``Retain_Set``  – the celebrities (people the model knew before fine-tuning), evaluation shape.

Evaluation fields:

* ``Classification_Task`` = struct ``{Image_Textual_Questions: [...], Pure_Text_Questions: [...]}``,
  each item ``{Correct_Answer: letter, Options: {A..D}, Question}``;
* ``Generation_Task`` = list of ``{Ground_Truth, Question, Type}`` with Type ``Image_Textual`` or
  ``Pure_Text``;
* ``Mask_Task`` (cloze) = list of ``{Ground_Truth, Question (with a ``__`` blank), Type}``;
* ``biography`` is a string column; the person's name is read from it (JSON object, dict repr or
  ``Name: ...`` text), "" when it names nobody. The top-level ``question``/``answer`` columns are not used.
* images are ``{"bytes", "path"}`` structs (a bare bytes value is accepted too); struct columns
  that arrive as JSON strings (other exports) are decoded.

Mapping to our splits (all records validated; any problem is a one-line `DataError`):

* ``forget``: phase ``unlearn`` = the ``metadata`` QA of the forget people (image+text generation,
  the photo shown, as the benchmark fine-tunes and unlearns on them); phase ``eval`` = their
  classification / generation / cloze questions, image+text items with the original photo and
  Pure_Text items without a photo.
* ``retain``: the same two phases for the retain people (the unlearn-phase QA feeds retain terms).
* ``test``: ``Test_Set`` rows of the forget people, phase ``eval``; the k-th image+text question of
  a person is shown ``images[k % len(images)]`` (deterministic rotation over the transformed photos).
* ``real``: ``Retain_Set`` (celebrities), phase ``eval``, population ``real``, profile ids prefixed
  ``real:`` so they never collide with fictitious ids.

The helpers `find_split_files`, `iter_rows` and `decode_image` are shared with the CLEAR loader.
"""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .record import OPTION_LETTERS, Record, RecordError

BENCH = "MLLMU-Bench"
FORGET_PERCENTS = (5, 10, 15)
EVAL_FIELDS = ("Classification_Task", "Generation_Task", "Mask_Task")
TYPE_TO_MODALITY = {"Image_Textual": "image+text", "Pure_Text": "text"}
_MLLMU_HINT = (
    "put a local copy of the released MLLMU-Bench parquet files there (Hugging Face dataset "
    "MLLMMU/MLLMU-Bench: ft_Data, forget_5/10/15, retain_95/90/85, Full_Set, Test_Set, Retain_Set)"
)


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by clear.py)
# --------------------------------------------------------------------------------------------


def check_folder(folder: str | Path, bench: str, hint: str) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{bench} folder {root} does not exist or is not a folder: {hint}")
    return root


def _split_candidates(root: Path, name: str) -> list[Path]:
    single = root / f"{name}.parquet"
    if single.is_file():
        return [single]
    sub = root / name
    if sub.is_dir():
        return sorted(p for p in sub.rglob("*.parquet") if p.is_file())
    return sorted(p for p in root.iterdir() if p.is_file() and p.name.startswith(f"{name}-") and p.name.endswith(".parquet"))


def has_split(root: Path, name: str) -> bool:
    return bool(_split_candidates(root, name))


def find_split_files(root: Path, name: str, bench: str) -> list[Path]:
    """The parquet file(s) of split `name`: NAME.parquet, NAME/**/*.parquet or NAME-*.parquet."""
    files = _split_candidates(root, name)
    if not files:
        raise DataError(
            f"{bench}: no parquet file for split {name!r} in {root}: put it at {root / (name + '.parquet')}, "
            f"{root / name}/*.parquet or {root / name}-*.parquet"
        )
    return files


@dataclass
class Row:
    """One parquet row with where it came from (for error messages)."""

    path: Path
    index: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path} row {self.index}"


def _is_lfs_pointer(path: Path) -> bool:
    """A clone made without Git LFS leaves small text pointers where the parquet files should be."""
    try:
        with open(path, "rb") as fh:
            return fh.read(40).startswith(b"version https://git-lfs")
    except OSError:
        return False


def iter_rows(files: list[Path], bench: str, required: tuple[str, ...]) -> Iterator[Row]:
    """Rows of the files as dicts; a missing column names the file and the field."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            pf = pq.ParquetFile(path)
            names = list(pf.schema_arrow.names)
        except Exception as exc:  # pyarrow raises several types for damaged files
            if _is_lfs_pointer(path):
                raise DataError(f"{bench}: {path} is a Git LFS pointer, not the parquet file: run `git lfs pull` "
                                "in the cloned dataset") from None
            raise DataError(f"{bench}: {path} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
        for field_name in required:
            if field_name not in names:
                raise DataError(f"{bench}: {path} is missing field {field_name!r} (it has: {', '.join(names) or 'no columns'})")
        index = 0
        try:
            for batch in pf.iter_batches(batch_size=64):
                for data in batch.to_pylist():
                    yield Row(path, index, data)
                    index += 1
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{bench}: {path} row {index}: cannot read ({type(exc).__name__}: {exc})") from None


def decode_image(value: Any, where: str, base_dir: Path | None = None) -> Image.Image:
    """An image cell ({"bytes", "path"} struct, raw bytes, or a path) → PIL RGB; errors name file+row."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    data = None
    path = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value
    elif value is None:
        raise DataError(f"{where}: no image")
    else:
        raise DataError(f"{where}: image has unexpected type {type(value).__name__}")
    if data is None:
        if not isinstance(path, str) or not path:
            raise DataError(f"{where}: image has neither bytes nor a path")
        candidate = Path(path)
        if not candidate.is_absolute() and base_dir is not None:
            candidate = base_dir / candidate
        try:
            data = candidate.read_bytes()
        except OSError as exc:
            raise DataError(f"{where}: image file {candidate} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"{where}: image bytes have unexpected type {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"{where}: corrupt image, bytes are not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for damaged data
        raise DataError(f"{where}: corrupt image, cannot decode ({type(exc).__name__}: {exc})") from None


def text_value(value: Any, where: str, field_name: str) -> str:
    """A text cell; numbers are accepted (a year), anything else (None too) is a DataError naming the field.

    A blank string passes here and is refused by `Record.validate` ("record without an answer")."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = "missing" if value is None else f"not text ({type(value).__name__})"
        raise DataError(f"{where}: field {field_name!r} is {kind}")
    return str(value)


def validated(record: Record, where: str) -> Record:
    try:
        return record.validate()
    except RecordError as err:
        raise DataError.from_record_error(err, where) from None


def _jsonish(value: Any, where: str, field_name: str) -> Any:
    """Struct columns may also arrive as JSON strings (some exports); decode those."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{where}: field {field_name!r} is not valid JSON ({type(exc).__name__}: {exc})") from None
    return value


def _safe(fn, where: str, *args):
    """Run one row's conversion; anything but a DataError becomes one (malformed cell values)."""
    try:
        return fn(*args)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: malformed row ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------
# MLLMU-Bench
# --------------------------------------------------------------------------------------------


def _forget_percent(forget_split: str | int) -> int:
    match = re.fullmatch(r"(?:forget)?_?0*(\d+)", str(forget_split).strip().lower())
    pct = int(match.group(1)) if match else -1
    if pct not in FORGET_PERCENTS:
        raise DataError(f"{BENCH}: forget_split {forget_split!r} is not one of forget_5, forget_10, forget_15")
    return pct


def _profile_id(row: Row, prefix: str = "") -> str:
    value = row.data.get("ID")
    if value is None or isinstance(value, (bool, dict, list)) or str(value).strip() == "":
        raise DataError(f"{BENCH}: {row.where}: field 'ID' is missing or empty")
    return prefix + str(value).strip()


_NAME_IN_TEXT = re.compile(r"""["']?[Nn]ame["']?\s*[:=]\s*["']?([^"',\n}]+)""")


def _name_of(row: Row) -> str:
    """The person's name from ``biography`` (a string column in the release): a JSON object, a
    Python dict repr, or text with a ``Name: ...`` field; "" when it names nobody."""
    bio = row.data.get("biography")
    if isinstance(bio, str):
        text = bio
        try:
            bio = json.loads(text)
        except (ValueError, RecursionError):
            try:
                bio = ast.literal_eval(text) if text.lstrip().startswith("{") else None
            except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
                bio = None
            if not isinstance(bio, dict):
                match = _NAME_IN_TEXT.search(text)
                return match.group(1).strip() if match else ""
    if isinstance(bio, dict):
        name = bio.get("Name") or bio.get("name")
        return name.strip() if isinstance(name, str) else ""
    return ""


def _unlearn_records(row: Row, split: str, pid: str, population: str) -> list[Record]:
    where = f"{BENCH}: {row.where}"
    items = _jsonish(row.data.get("metadata"), where, "metadata")
    if not isinstance(items, list):
        raise DataError(f"{where}: field 'metadata' must be a list of {{Question, Answer}} objects, got {type(items).__name__}")
    image = None
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{where}: metadata[{k}] is not an object")
        if "Question" not in item and any(str(key).startswith("Additional_") for key in item):
            continue  # the profile-level extra QA the reference training also skips
        if image is None:
            image = decode_image(row.data.get("image"), where, row.path.parent)
        question = text_value(item.get("Question"), where, f"metadata[{k}].Question")
        answer = text_value(item.get("Answer"), where, f"metadata[{k}].Answer")
        rec = Record(
            id=f"mllmu:{split}:{pid}:unlearn:qa:{k}", profile_id=pid, question=question, answer=answer,
            task="generation", modality="image+text", split=split, phase="unlearn", population=population,
            name=_name_of(row), image=image,
        )
        out.append(validated(rec, f"{where} metadata[{k}]"))
    return out


def _options(value: Any, where: str, field_name: str) -> tuple[list[str], list[str]]:
    """Options → (letters kept, texts) in A–D order."""
    value = _jsonish(value, where, field_name)
    if isinstance(value, dict):
        letters = [L for L in OPTION_LETTERS if value.get(L) is not None]
        texts = [text_value(value[L], where, f"{field_name}.{L}") for L in letters]
        return letters, texts
    if isinstance(value, list):
        texts = [text_value(v, where, f"{field_name}[{i}]") for i, v in enumerate(value[: len(OPTION_LETTERS)])]
        return list(OPTION_LETTERS[: len(texts)]), texts
    raise DataError(f"{where}: field {field_name!r} must be a dict of options A-D")


def _eval_records(row: Row, split: str, pid: str, population: str, images: list[Image.Image]) -> list[Record]:
    """Classification / generation / cloze questions of one person; image+text items get a photo."""
    where = f"{BENCH}: {row.where}"
    name = _name_of(row)
    out: list[Record] = []
    shown = 0

    def photo() -> Image.Image:
        nonlocal shown
        img = images[shown % len(images)]
        shown += 1
        return img

    def add(rec: Record, item_where: str) -> None:
        out.append(validated(rec, item_where))

    cls = _jsonish(row.data.get("Classification_Task"), where, "Classification_Task")
    if not isinstance(cls, dict):
        raise DataError(f"{where}: field 'Classification_Task' is missing or not an object")
    for group, modality in (("Image_Textual_Questions", "image+text"), ("Pure_Text_Questions", "text")):
        if group not in cls:
            raise DataError(f"{where}: missing field 'Classification_Task.{group}'")
        items = _jsonish(cls[group], where, f"Classification_Task.{group}") or []
        if not isinstance(items, list):
            raise DataError(f"{where}: field 'Classification_Task.{group}' is not a list")
        for k, item in enumerate(items):
            fname = f"Classification_Task.{group}[{k}]"
            if not isinstance(item, dict):
                raise DataError(f"{where}: {fname} is not an object")
            for key in ("Question", "Options", "Correct_Answer"):
                if key not in item:
                    raise DataError(f"{where}: missing field '{fname}.{key}'")
            question = text_value(item["Question"], where, f"{fname}.Question")
            letters, texts = _options(item["Options"], where, f"{fname}.Options")
            letter = text_value(item["Correct_Answer"], where, f"{fname}.Correct_Answer").strip().rstrip(".):").upper()
            if letter not in letters:
                raise DataError(f"{where}: {fname}.Correct_Answer {item['Correct_Answer']!r} is not one of the options {letters}")
            idx = letters.index(letter)
            rec = Record(
                id=f"mllmu:{split}:{pid}:eval:cls-{'img' if modality == 'image+text' else 'txt'}:{k}",
                profile_id=pid, question=question, answer=texts[idx], task="classification", modality=modality,
                split=split, phase="eval", population=population, name=name,
                image=photo() if modality == "image+text" else None, options=texts, answer_index=idx,
            )
            add(rec, f"{where} {fname}")

    for field_name, task, tag in (("Generation_Task", "generation", "gen"), ("Mask_Task", "cloze", "cloze")):
        items = _jsonish(row.data.get(field_name), where, field_name)
        if not isinstance(items, list):
            raise DataError(f"{where}: field {field_name!r} is missing or not a list")
        for k, item in enumerate(items):
            fname = f"{field_name}[{k}]"
            if not isinstance(item, dict):
                raise DataError(f"{where}: {fname} is not an object")
            for key in ("Question", "Ground_Truth", "Type"):
                if key not in item:
                    raise DataError(f"{where}: missing field '{fname}.{key}'")
            kind = item["Type"]
            if kind not in TYPE_TO_MODALITY:
                raise DataError(f"{where}: {fname}.Type {kind!r} is not Image_Textual or Pure_Text")
            modality = TYPE_TO_MODALITY[kind]
            rec = Record(
                id=f"mllmu:{split}:{pid}:eval:{tag}:{k}", profile_id=pid,
                question=text_value(item["Question"], where, f"{fname}.Question"),
                answer=text_value(item["Ground_Truth"], where, f"{fname}.Ground_Truth"),
                task=task, modality=modality, split=split, phase="eval", population=population, name=name,
                image=photo() if modality == "image+text" else None,
            )
            add(rec, f"{where} {fname}")
    return out


def _eval_with_photo(row: Row, split: str, pid: str, population: str) -> list[Record]:
    photo = decode_image(row.data.get("image"), f"{BENCH}: {row.where}", row.path.parent)
    return _eval_records(row, split, pid, population, [photo])


def _split_rows(root: Path, name: str, required: tuple[str, ...] = ("ID",)) -> list[Row]:
    return list(iter_rows(find_split_files(root, name, BENCH), BENCH, required))


def _rows_by_id(root: Path, name: str, ids: list[str], required: tuple[str, ...], purpose: str) -> dict[str, Row]:
    """The rows of `name` for the given people; every one of them must be there."""
    wanted = set(ids)
    found: dict[str, Row] = {}
    for row in iter_rows(find_split_files(root, name, BENCH), BENCH, required):
        pid = _safe(_profile_id, f"{BENCH}: {row.where}", row)
        if pid in wanted and pid not in found:
            found[pid] = row
    missing = [i for i in ids if i not in found]
    if missing:
        raise DataError(f"{BENCH}: {name} has no row for ID(s) {', '.join(missing[:5])} ({purpose})")
    return found


def _unique_ids(rows: list[Row]) -> list[str]:
    ids: list[str] = []
    for row in rows:
        pid = _safe(_profile_id, f"{BENCH}: {row.where}", row)
        if pid not in ids:
            ids.append(pid)
    return ids


def _side(root: Path, file_name: str, split: str) -> tuple[list[str], list[Record]]:
    """forget or retain: ids from the split file, QA from it or from ft_Data / Full_Set."""
    rows = _split_rows(root, file_name)
    ids = _unique_ids(rows)
    if not ids:
        raise DataError(f"{BENCH}: {file_name} has no rows")
    columns = set(rows[0].data)
    records: list[Record] = []

    if "metadata" in columns:
        train_rows = {}
        for row in rows:
            train_rows.setdefault(_profile_id(row), row)
    else:
        train_rows = _rows_by_id(root, "ft_Data", ids, ("ID", "image", "metadata"), f"unlearning QA of {file_name}")
    for pid in ids:
        row = train_rows[pid]
        records += _safe(_unlearn_records, f"{BENCH}: {row.where}", row, split, pid, "fictitious")

    if any(f in columns for f in EVAL_FIELDS):
        for f in EVAL_FIELDS + ("image",):
            if f not in columns:
                raise DataError(f"{BENCH}: {rows[0].path} is missing field {f!r}")
        eval_rows = {}
        for row in rows:
            eval_rows.setdefault(_profile_id(row), row)
    else:
        eval_rows = _rows_by_id(root, "Full_Set", ids, ("ID", "image") + EVAL_FIELDS, f"evaluation questions of {file_name}")
    for pid in ids:
        row = eval_rows[pid]
        records += _safe(_eval_with_photo, f"{BENCH}: {row.where}", row, split, pid, "fictitious")
    # ft_Data has no biography: give its QA the name the evaluation rows carry.
    names = {r.profile_id: r.name for r in records if r.name}
    for r in records:
        r.name = r.name or names.get(r.profile_id, "")
    return ids, records


def load_mllmu(folder: str | Path, forget_split: str = "forget_10",
               test_ids: Iterable[str] | None = None) -> dict[str, list[Record]]:
    """Local MLLMU-Bench folder → {"forget", "retain", "test", "real"} lists of validated `Record`s.

    forget/retain mix phase "unlearn" (the ft_Data QA of those people) and phase "eval" records;
    test and real are eval only. `test_ids`: whose Test_Set rows to read (default: the forget
    split's people; `--forget-ids` chooses others). Raises `DataError` (one line, naming
    folder/file/row/field).
    """
    root = check_folder(folder, BENCH, _MLLMU_HINT)
    pct = _forget_percent(forget_split)
    forget_name, retain_name = f"forget_{pct}", f"retain_{100 - pct}"
    # Fail early on a missing file, before decoding anything.
    for name in (forget_name, retain_name, "Test_Set", "Retain_Set"):
        find_split_files(root, name, BENCH)

    forget_ids, forget = _side(root, forget_name, "forget")
    retain_ids, retain = _side(root, retain_name, "retain")
    overlap = set(forget_ids) & set(retain_ids)
    if overlap:
        raise DataError(f"{BENCH}: {forget_name} and {retain_name} share ID(s) {', '.join(sorted(overlap)[:5])}")

    test: list[Record] = []
    wanted = set(forget_ids) if test_ids is None else {str(i) for i in test_ids}
    for row in iter_rows(find_split_files(root, "Test_Set", BENCH), BENCH, ("ID", "images") + EVAL_FIELDS):
        where = f"{BENCH}: {row.where}"
        pid = _safe(_profile_id, where, row)
        if pid not in wanted:
            continue

        def convert(r=row, p=pid, w=where) -> list[Record]:
            cells = r.data.get("images")
            if not isinstance(cells, list) or not cells:
                raise DataError(f"{w}: field 'images' must be a non-empty list of images")
            imgs = [decode_image(c, f"{w} images[{j}]", r.path.parent) for j, c in enumerate(cells)]
            return _eval_records(r, "test", p, "fictitious", imgs)

        test += _safe(convert, where)

    real: list[Record] = []
    for row in iter_rows(find_split_files(root, "Retain_Set", BENCH), BENCH, ("ID", "image") + EVAL_FIELDS):
        where = f"{BENCH}: {row.where}"
        pid = _safe(_profile_id, where, row, "real:")
        real += _safe(_eval_with_photo, where, row, "real", pid, "real")

    return {"forget": forget, "retain": retain, "test": test, "real": real}
