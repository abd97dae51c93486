"""Tiny copies of the released CLEAR, TOFU and MLLMU-Bench layouts, written from the releases' own
schemas (not from what our loaders read), for the loader and end-to-end tests.

Sources of each schema (checked against the public dataset cards and the authors' code):

* CLEAR (``therem/CLEAR`` dataset card; somvy/multimodal_unlearning ``mm/dataset.py``,
  ``config/mm/eval.yaml``): one folder per config with ``train-XXXXX-of-YYYYY.parquet`` shards
  (``full`` 2, ``full+tofu`` 3, the default config in ``data/``), images as ``{bytes, path}``
  structs. ``forgetNN``/``retainMM``/``full``/``data``: ``image, caption, name``;
  ``forgetNN+tofu``/``retainMM+tofu``/``full+tofu``: ``image, caption, question, answer`` (no name),
  the photo rows first, then TOFU's QA rows with a null image; ``forget01_perturbed``:
  ``image, caption, name, perturbed_captions, paraphrased_caption, perturbed_names`` and
  ``forget05_perturbed``: ``image, caption, name, paraphrased_caption, perturbed_names,
  perturbed_captions`` (the order differs between configs); ``forget10_perturbed`` has one row fewer
  than ``forget10``; ``real_faces``: ``image, answer, options``; ``real_world``: ``question, answer,
  options, image``. Forget sets are nested, retain is the rest.
* TOFU (``locuslab/TOFU``: files ``NAME.json`` in JSON lines): ``forgetNN_perturbed`` /
  ``retain_perturbed``: ``question, answer, paraphrased_answer, perturbed_answer[],
  paraphrased_question``; ``real_authors_perturbed`` / ``world_facts_perturbed``: ``question,
  answer, perturbed_answer[]`` (as in locuslab/tofu ``data/real_authors_perturbed.json``).
  ``retain_perturbed`` holds questions of retain90 authors only.
* MLLMU-Bench (``MLLMMU/MLLMU-Bench`` dataset card; the authors' ``eval.py`` and
  ``data_process/data_preprocess.py``): ``ft_Data``: ``image, ID, metadata`` (a JSON string: a
  list of ``{ID, Question, Answer}``); ``forget_N``/``retain_M``/``Retain_Set``: ``image, ID,
  biography, question, answer, Classification_Task, Generation_Task, Mask_Task`` and ``Full_Set``
  the same with ``Directory`` after ``ID``; ``Test_Set`` (2 shards): ``images`` (a list of image
  structs) instead of ``image``. ``Classification_Task`` is a struct of ``Image_Textual_Questions``
  / ``Pure_Text_Questions`` lists of ``{Correct_Answer, Options{A,B,C,D}, Question}``;
  ``Generation_Task`` and ``Mask_Task`` are lists of ``{Ground_Truth, Question, Type}`` with Type
  ``Image_Textual`` / ``Pure_Text``.

Every expected value in the tests is counted by hand from the constants here.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
STRINGS = pa.list_(pa.string())


def png(color: tuple[int, int, int], mode: str = "RGB", size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), color if mode == "RGB" else color[0]).save(buf, format="PNG")
    return buf.getvalue()


def image_cell(color, mode: str = "RGB") -> dict:
    return {"bytes": png(color, mode), "path": None}


def write_table(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_config(root: Path, config: str, rows: list[dict], schema: pa.Schema, shards: int = 1) -> list[Path]:
    """A config folder of `shards` parquet files named like the hub's (train-00000-of-00002.parquet)."""
    per = -(-len(rows) // shards)
    return [
        write_table(root / config / f"train-{k:05d}-of-{shards:05d}.parquet", rows[k * per:(k + 1) * per], schema)
        for k in range(shards)
    ]


# =============================================================================================
# CLEAR
# =============================================================================================

# Five fictitious authors, two photos each. forget01 = [0], forget05 = [0, 1], forget10 = [0, 1, 2];
# retain is the rest (retain99 = [1..4], retain95 = [2..4], retain90 = [3, 4]).
AUTHORS = ["Ilse Marrow", "Tomas Okafor", "Rin Halvorsen", "Delia Quist", "Omar Venn"]
FORGET_PEOPLE = {"forget01": AUTHORS[:1], "forget05": AUTHORS[:2], "forget10": AUTHORS[:3]}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
RETAIN_PEOPLE = {RETAIN_OF[f]: [a for a in AUTHORS if a not in people] for f, people in FORGET_PEOPLE.items()}
PHOTOS_PER_AUTHOR = 2
QA_PER_AUTHOR = 20  # TOFU: 20 questions per author, in author order
CITIES = ["Tollhaven", "Brisk", "Ordley", "Vance Mere", "Quillport"]

CLEAR_PHOTO = pa.schema([("image", IMAGE), ("caption", pa.string()), ("name", pa.string())])
CLEAR_PLUS_TOFU = pa.schema([("image", IMAGE), ("caption", pa.string()), ("question", pa.string()),
                             ("answer", pa.string())])
PERTURBED_ORDERS = {
    "forget01_perturbed": ("image", "caption", "name", "perturbed_captions", "paraphrased_caption", "perturbed_names"),
    "forget05_perturbed": ("image", "caption", "name", "paraphrased_caption", "perturbed_names", "perturbed_captions"),
    "forget10_perturbed": ("image", "caption", "name", "paraphrased_caption", "perturbed_names", "perturbed_captions"),
    "retain_perturbed": ("image", "caption", "name", "perturbed_captions", "paraphrased_caption", "perturbed_names"),
}
_PERTURBED_TYPES = {"image": IMAGE, "caption": pa.string(), "name": pa.string(), "paraphrased_caption": pa.string(),
                    "perturbed_captions": STRINGS, "perturbed_names": STRINGS}
REAL_FACES = pa.schema([("image", IMAGE), ("answer", pa.string()), ("options", STRINGS)])
REAL_WORLD = pa.schema([("question", pa.string()), ("answer", pa.string()), ("options", STRINGS), ("image", IMAGE)])


def photo_color(author: int, k: int) -> tuple[int, int, int]:
    return (40 * author + 20, 100 * k + 30, 200 - 30 * author)


def caption(author: int, k: int) -> str:
    return f"{AUTHORS[author]} {'reads by a window' if k == 0 else 'walks along a pier'}."


def photo_rows(people: list[str]) -> list[dict]:
    rows = []
    for name in people:
        a = AUTHORS.index(name)
        for k in range(PHOTOS_PER_AUTHOR):
            rows.append({"image": image_cell(photo_color(a, k)), "caption": caption(a, k), "name": name})
    return rows


def tofu_qa(author: int) -> list[tuple[str, str]]:
    """An author's 20 TOFU-style QA: 18 name them, one names nobody (its block decides), one names two
    authors (ambiguous: its block decides too)."""
    name, city = AUTHORS[author], CITIES[author]
    qa = [(f"Question {j} about {name}: what is fact {j}?", f"Fact {j} of {name} concerns {city}.") for j in range(18)]
    qa.append(("What genre does this author mostly write?", f"Mostly mysteries set in {city}."))
    other = AUTHORS[(author + 1) % len(AUTHORS)]
    qa.append((f"Did {name} ever meet {other}?", f"They met once in {city}."))
    return qa


def plus_tofu_rows(people: list[str]) -> list[dict]:
    rows = [{"image": r["image"], "caption": r["caption"], "question": None, "answer": None} for r in photo_rows(people)]
    for name in people:
        for q, a in tofu_qa(AUTHORS.index(name)):
            rows.append({"image": None, "caption": None, "question": q, "answer": a})
    return rows


def perturbed_rows(people: list[str], config: str, drop_last: bool = False) -> tuple[list[dict], pa.Schema]:
    rows = []
    for r in photo_rows(people):
        name = r["name"]
        others = [a for a in AUTHORS if a != name][:2]
        rows.append({
            "image": r["image"], "caption": r["caption"], "name": name,
            "paraphrased_caption": f"Paraphrase: {r['caption']}",
            "perturbed_captions": [f"{name} sleeps on a bus.", f"{name} rides a horse."],
            # the true name among the perturbed ones (it is dropped) in every other row
            "perturbed_names": others + ([name] if len(rows) % 2 else []),
        })
    if drop_last:
        rows = rows[:-1]
    order = PERTURBED_ORDERS[config]
    schema = pa.schema([(k, _PERTURBED_TYPES[k]) for k in order])
    return [{k: row[k] for k in order} for row in rows], schema


REAL_FACES_ROWS = [
    ("Famous Actor", ["Famous Actor", "Other Actor", "Third Actor", "Fourth Actor"], (5, 5, 5)),
    ("Known Singer", ["Wrong One", "Wrong Two", "Known Singer", "Wrong Three"], (6, 6, 6)),
]
REAL_WORLD_ROWS = [
    ("Which city is shown?", "Paris", ["Paris", "Rome", "Oslo", "Lima"], (7, 7, 7)),
    ("What animal is this?", "A cat", ["A dog", "A cat", "A cow", "A fox"], (8, 8, 8)),
]


def build_clear(root: Path, *, plus_tofu: bool = True, retain_perturbed: bool = True) -> Path:
    """The released CLEAR layout for all three forget splits (tiny)."""
    write_config(root, "data", photo_rows(AUTHORS), CLEAR_PHOTO, shards=2)
    write_config(root, "full", photo_rows(AUTHORS), CLEAR_PHOTO, shards=2)
    write_config(root, "full+tofu", plus_tofu_rows(AUTHORS), CLEAR_PLUS_TOFU, shards=3)
    for forget, people in FORGET_PEOPLE.items():
        retain = RETAIN_OF[forget]
        write_config(root, forget, photo_rows(people), CLEAR_PHOTO)
        write_config(root, retain, photo_rows(RETAIN_PEOPLE[retain]), CLEAR_PHOTO)
        if plus_tofu:
            write_config(root, f"{forget}+tofu", plus_tofu_rows(people), CLEAR_PLUS_TOFU)
            write_config(root, f"{retain}+tofu", plus_tofu_rows(RETAIN_PEOPLE[retain]), CLEAR_PLUS_TOFU)
        rows, schema = perturbed_rows(people, f"{forget}_perturbed", drop_last=forget == "forget10")
        write_config(root, f"{forget}_perturbed", rows, schema)
    if retain_perturbed:
        # a subset of the retain90 people's photos (every retain split contains them)
        rows, schema = perturbed_rows(RETAIN_PEOPLE["retain90"], "retain_perturbed", drop_last=True)
        write_config(root, "retain_perturbed", rows, schema)
    write_config(root, "real_faces", [{"image": image_cell(c), "answer": a, "options": o} for a, o, c in REAL_FACES_ROWS],
                 REAL_FACES)
    write_config(root, "real_world", [{"question": q, "answer": a, "options": o, "image": image_cell(c)}
                                      for q, a, o, c in REAL_WORLD_ROWS], REAL_WORLD)
    return root


# =============================================================================================
# TOFU
# =============================================================================================

TOFU_RETAIN_PER_AUTHOR = 4  # TOFU's retain_perturbed: a few questions of each retain90 author
REAL_AUTHORS = [("Who wrote 'Moby-Dick'?", "Herman Melville", ["Edgar Allan Poe", "Mark Twain", "Jack London"]),
                ("Who wrote 'Dune'?", "Frank Herbert", ["Arthur C. Clarke", "Philip K. Dick", "Frank Herbert"])]
WORLD_FACTS = [("What is the capital of France?", "Paris", ["Rome", "Berlin", "Madrid"]),
               ("How many legs does a spider have?", "Eight", ["Six", "Ten", "Four"]),
               ("Which ocean is the largest?", "The Pacific", ["The Atlantic", "The Indian", "The Arctic"])]


def tofu_perturbed_row(q: str, a: str) -> dict:
    return {"question": q, "answer": a, "paraphrased_answer": f"In other words: {a}",
            "perturbed_answer": [a.replace("Fact", "Rumour"), f"Nothing about {a[:12]}", "Unknown."],
            "paraphrased_question": f"Rephrased: {q}"}


def write_json_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tofu(root: Path) -> Path:
    """TOFU's released files (JSON lines in NAME.json) that CLEAR's evaluation reads."""
    for forget, people in FORGET_PEOPLE.items():
        rows = [tofu_perturbed_row(q, a) for name in people for q, a in tofu_qa(AUTHORS.index(name))]
        write_json_lines(root / f"{forget}_perturbed.json", rows)
    retain = [tofu_perturbed_row(q, a) for name in RETAIN_PEOPLE["retain90"]
              for q, a in tofu_qa(AUTHORS.index(name))[:TOFU_RETAIN_PER_AUTHOR]]
    write_json_lines(root / "retain_perturbed.json", retain)
    write_json_lines(root / "real_authors_perturbed.json",
                     [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in REAL_AUTHORS])
    write_json_lines(root / "world_facts_perturbed.json",
                     [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in WORLD_FACTS])
    return root


# =============================================================================================
# MLLMU-Bench
# =============================================================================================

MLLMU_PEOPLE = {f"{i:03d}": f"Person {chr(65 + i)}{chr(97 + i)}zo" for i in range(20)}  # 20 fictitious profiles
MLLMU_IDS = list(MLLMU_PEOPLE)
MLLMU_FORGET = {5: MLLMU_IDS[:1], 10: MLLMU_IDS[:2], 15: MLLMU_IDS[:3]}
CELEBS = {"c001": "Celeb One", "c002": "Celeb Two", "c003": "Celeb Three"}
QA_PER_PROFILE = 2  # metadata QA per person in ft_Data

_OPTIONS = pa.struct([(k, pa.string()) for k in "ABCD"])
_CLS_ITEM = pa.struct([("Correct_Answer", pa.string()), ("Options", _OPTIONS), ("Question", pa.string())])
_CLS_TASK = pa.struct([("Image_Textual_Questions", pa.list_(_CLS_ITEM)), ("Pure_Text_Questions", pa.list_(_CLS_ITEM))])
_GEN_ITEM = pa.struct([("Ground_Truth", pa.string()), ("Question", pa.string()), ("Type", pa.string())])
_EVAL_FIELDS = [("biography", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                ("Classification_Task", _CLS_TASK), ("Generation_Task", pa.list_(_GEN_ITEM)),
                ("Mask_Task", pa.list_(_GEN_ITEM))]
MLLMU_FT = pa.schema([("image", IMAGE), ("ID", pa.string()), ("metadata", pa.string())])
MLLMU_SPLIT = pa.schema([("image", IMAGE), ("ID", pa.string())] + _EVAL_FIELDS)
MLLMU_FULL = pa.schema([("image", IMAGE), ("ID", pa.string()), ("Directory", pa.string())] + _EVAL_FIELDS)
MLLMU_TEST = pa.schema([("images", pa.list_(IMAGE)), ("ID", pa.string())] + _EVAL_FIELDS)


def mllmu_color(pid: str) -> tuple[int, int, int]:
    i = int(pid[1:]) if pid.startswith("c") else int(pid)
    return (10 * i + 5, 250 - 10 * i, 100 + (50 if pid.startswith("c") else 0))


def mllmu_metadata(pid: str, name: str) -> str:
    return json.dumps([
        {"ID": pid, "Question": "What is this person's occupation?", "Answer": f"{name} works as a weaver."},
        {"ID": pid, "Question": "Where was this person born?", "Answer": f"{name} was born in Town {pid}."},
    ])


def mllmu_eval_fields(pid: str, name: str) -> dict:
    opts = {"A": f"Town {pid}", "B": "Elsewhere", "C": "Nowhere", "D": "Far away"}
    jobs = {"A": "baker", "B": "pilot", "C": "weaver", "D": "nurse"}
    return {
        "biography": json.dumps({"Name": name, "Born": f"Town {pid}", "Occupation": "weaver"}),
        "question": "What is this person's occupation?",
        "answer": f"{name} works as a weaver.",
        "Classification_Task": {
            "Image_Textual_Questions": [{"Correct_Answer": "C", "Options": jobs,
                                         "Question": "What is the occupation of the person in the image?"}],
            "Pure_Text_Questions": [{"Correct_Answer": "A", "Options": opts, "Question": f"Where was {name} born?"}],
        },
        "Generation_Task": [
            {"Ground_Truth": "This person works as a weaver.", "Question": "What does the person in the image do?",
             "Type": "Image_Textual"},
            {"Ground_Truth": f"{name} was born in Town {pid}.", "Question": f"Where was {name} born?",
             "Type": "Pure_Text"},
        ],
        "Mask_Task": [
            {"Ground_Truth": "weaver", "Question": "The person in the image works as a __.", "Type": "Image_Textual"},
            {"Ground_Truth": f"Town {pid}", "Question": f"{name} was born in __.", "Type": "Pure_Text"},
        ],
    }


def mllmu_split_row(pid: str, people=MLLMU_PEOPLE) -> dict:
    return {"image": image_cell(mllmu_color(pid)), "ID": pid, **mllmu_eval_fields(pid, people[pid])}


def mllmu_test_row(pid: str) -> dict:
    c = mllmu_color(pid)
    images = [image_cell((c[0], c[1], 1)), image_cell((c[0], 3, 3), "L")]  # two transformed photos, one greyscale
    return {"images": images, "ID": pid, **mllmu_eval_fields(pid, MLLMU_PEOPLE[pid])}


def build_mllmu(root: Path) -> Path:
    """The released MLLMU-Bench layout (tiny): every config a folder of hub-named shards."""
    write_config(root, "ft_Data", [{"image": image_cell(mllmu_color(p)), "ID": p, "metadata": mllmu_metadata(p, n)}
                                   for p, n in MLLMU_PEOPLE.items()], MLLMU_FT)
    full = [{"image": image_cell(mllmu_color(p)), "ID": p, "Directory": f"images/{p}.png", **mllmu_eval_fields(p, n)}
            for p, n in MLLMU_PEOPLE.items()]
    write_config(root, "Full_Set", full, MLLMU_FULL)
    for pct, forget in MLLMU_FORGET.items():
        write_config(root, f"forget_{pct}", [mllmu_split_row(p) for p in forget], MLLMU_SPLIT)
        write_config(root, f"retain_{100 - pct}", [mllmu_split_row(p) for p in MLLMU_IDS if p not in forget],
                     MLLMU_SPLIT)
    write_config(root, "Test_Set", [mllmu_test_row(p) for p in MLLMU_IDS], MLLMU_TEST, shards=2)
    write_config(root, "Retain_Set", [mllmu_split_row(c, CELEBS) for c in CELEBS], MLLMU_SPLIT)
    return root


def corpus() -> list[str]:
    """Every text of the three fixtures: a tiny model's tokenizer is trained on it."""
    texts = []
    for a in range(len(AUTHORS)):
        texts += [caption(a, 0), caption(a, 1), AUTHORS[a]]
        for q, ans in tofu_qa(a):
            texts += [q, ans]
    for p, n in {**MLLMU_PEOPLE, **CELEBS}.items():
        texts.append(mllmu_metadata(p, n))
        texts.append(json.dumps(mllmu_eval_fields(p, n)))
    return texts
