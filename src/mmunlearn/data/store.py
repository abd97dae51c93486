"""Reading and writing record collections, and `load_data`: one entry point for every source.

A world folder is `world.json` (manifest: seed, counts, ids per split), `profiles.json` and one
parquet file per split under `data/` written through `datasets` (images as the Image feature), so
`datasets.load_dataset("parquet", data_dir=DIR/"data")` opens it too. Files are written into a
temporary folder and renamed into place: an interrupted `world` never leaves a half-written world.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .record import Record, RecordError, records_to_dataset

WORLD_MANIFEST = "world.json"


def check_out_dir(out: str | Path, overwrite: bool = False, resume: bool = False, resumable: bool = False) -> Path:
    """Refuse an --out that is a file, or a non-empty folder without --overwrite/--resume (changes nothing).
    `resumable`: the command has --resume (the message offers it only then)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite and not resume:
        raise DataError(f"--out {out} is not empty; pass --overwrite to replace it"
                        + (" (or --resume to continue the run)" if resumable else ""))
    return out


def prepare_out_dir(out: str | Path, overwrite: bool = False, resume: bool = False, resumable: bool = False) -> Path:
    """A run folder is created fresh: a non-empty one is refused unless --overwrite/--resume."""
    out = check_out_dir(out, overwrite=overwrite, resume=resume, resumable=resumable)
    if out.exists() and any(out.iterdir()) and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back: the only way POSIX offers)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode open() gives a new file under the process's umask."""
    return 0o666 & ~_umask()


def honour_umask(folder: str | Path) -> None:
    """Give the weight files a save left at 0600 the mode the umask allows (safetensors writes through a
    private temporary file): a run folder is shared as a whole, its model included."""
    mode = _file_mode()
    for path in Path(folder).rglob("*.safetensors"):
        if path.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            path.chmod(mode)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename, so a reader never sees a half-written results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; results are for everyone the umask lets read them, as open() would make
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_folder(staged: str | Path, dest: str | Path) -> None:
    """Put the finished folder `staged` at `dest`, the one there before moved aside first and removed last: a
    crash leaves the old folder (at `dest` or `dest.old`) or the new one, never a half-written one."""
    staged, dest = Path(staged), Path(dest)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staged.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def save_world(world, out: str | Path, overwrite: bool = False) -> Path:
    import datasets

    from .world import manifest

    datasets.disable_progress_bars()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"--out {out} is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        (tmp / "data").mkdir()
        for name, recs in world.splits.items():
            records_to_dataset(recs).to_parquet(str(tmp / "data" / f"{name}.parquet"))
        (tmp / WORLD_MANIFEST).write_text(json.dumps(manifest(world), indent=2) + "\n")
        (tmp / "profiles.json").write_text(json.dumps([p.to_dict() for p in world.profiles], indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_parquet_records(path: Path) -> list[Record]:
    """Records from one of our parquet files; a corrupt image or a bad record names file and row."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable parquet file ({exc.__class__.__name__}: {exc})") from exc
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("id", "question", "answer", "task", "modality") if k not in row]
        if missing:
            raise DataError(f"{path}: row {i} lacks field(s) {', '.join(missing)}")
        img = row.get("image")
        if img is not None:
            data = img.get("bytes") if isinstance(img, dict) else img
            if data is None and isinstance(img, dict) and img.get("path"):
                data = Path(img["path"]).read_bytes()
            try:
                pil = Image.open(io.BytesIO(data))
                pil.load()
                row["image"] = pil.convert("RGB")
            except (UnidentifiedImageError, OSError, TypeError) as exc:
                raise DataError(f"{path}: row {i} (id {row.get('id')!r}) has a corrupt image ({exc})") from exc
        try:
            out.append(Record.from_row(row).validate())
        except (RecordError, TypeError) as exc:
            raise DataError(f"{path}: row {i}: {exc}") from exc
    return out


@dataclass
class DataBundle:
    """The records of one unlearning problem, whatever the source.

    `splits` keys: forget, retain, test, real, understanding, holdout, pretrain, finetune (those the
    source has). forget/retain hold training phrasings (phase "unlearn") and evaluation ones ("eval").
    """

    source: str
    root: Path
    forget_split: str
    splits: dict[str, list[Record]]
    forget_ids: set[str] = field(default_factory=set)
    retain_ids: set[str] = field(default_factory=set)
    manifest: dict = field(default_factory=dict)
    # Why a cell ("split/modality") lacks a metric or is absent (CLEAR without TOFU or without its
    # text side...), for the summary; and the one-line warnings `load_data` printed.
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def eval(self, split: str) -> list[Record]:
        return [r for r in self.splits.get(split, []) if r.phase == "eval"]

    def train(self, split: str) -> list[Record]:
        return [r for r in self.splits.get(split, []) if r.phase != "eval"]


def _retain_name(forget_split: str) -> str:
    pct = int(forget_split.split("_")[1])
    return f"retain_{100 - pct}"


# splits later worlds gained: an older world folder without them still loads
ADDED_SPLITS = ("understanding_unseen",)


def world_identity(manifest: dict) -> str:
    """What makes a person in the world a bundle came from: "look" (the default, and any data that is not the
    synthetic world) or "face" (data/portraits.py)."""
    return (manifest.get("config") or {}).get("identity", "look")


def world_tune_ids(manifest: dict) -> tuple[list[str], list[str]]:
    """(people to forget, people to keep) of the world's tuning population (data/world.tune_population)."""
    from .world import tune_population

    ids = manifest.get("ids", {})
    if "tune_forget" in ids:
        return list(ids["tune_forget"]), list(ids.get("tune_retain", []))
    return tune_population(ids, int(manifest.get("seed", 0)))


def load_world(root: Path, forget_split: str = "forget_10", splits: tuple[str, ...] | None = None,
               keep_tune: bool = False) -> DataBundle:
    """A world's splits. Its tuning population (`world_tune_ids`) leaves the retain side unless
    `keep_tune`: reported runs neither forget nor count them (`mmunlearn tune` works on them)."""
    manifest_path = root / WORLD_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{manifest_path}: unreadable world manifest ({exc})") from exc
    if forget_split not in manifest.get("ids", {}):
        known = sorted(k for k in manifest.get("ids", {}) if k.startswith("forget_"))
        raise DataError(f"forget split {forget_split!r} is not in {root} (available: {', '.join(known)})")
    retain_split = _retain_name(forget_split)
    mapping = {"forget": forget_split, "retain": retain_split, "test": "test", "real": "real",
               "understanding": "understanding", "understanding_unseen": "understanding_unseen",
               "holdout": "holdout", "pretrain": "pretrain", "finetune": "finetune"}
    wanted = splits or tuple(mapping)
    out: dict[str, list[Record]] = {}
    for key in wanted:
        path = root / "data" / f"{mapping[key]}.parquet"
        if key in ADDED_SPLITS and not path.is_file():
            continue  # a world written before the split existed: evaluated as "no records" (summary "skipped")
        if not path.is_file():
            raise DataError(f"{path} is missing: the world folder is incomplete (re-create it with `mmunlearn world`)")
        out[key] = read_parquet_records(path)
    forget_ids = set(manifest["ids"][forget_split])
    retain_ids = set(manifest["ids"][retain_split])
    if not keep_tune:
        tune = set().union(*world_tune_ids(manifest))
        retain_ids -= tune
        if "retain" in out and tune:
            out["retain"] = [r for r in out["retain"] if r.profile_id not in tune]
    return DataBundle("world", root, forget_split, out, forget_ids, retain_ids, manifest)


def check_disjoint(bundle: DataBundle) -> None:
    overlap = bundle.forget_ids & bundle.retain_ids
    if overlap:
        raise DataError(f"forget and retain sets overlap on {len(overlap)} id(s): {', '.join(sorted(overlap)[:5])}")


def load_data(root: str | Path, forget_split: str = "forget_10", splits: tuple[str, ...] | None = None,
              tofu: str | Path | None = None, forget_ids: Iterable[str] | None = None,
              retain_ids: Iterable[str] | None = None, keep_tune: bool = False) -> DataBundle:
    """Open a world folder, an MLLMU-Bench folder, a CLEAR folder (detected from its files) or your
    own people (a .jsonl / .json / .csv file, or a folder with a metadata file: data/own.py).

    `forget_ids` chooses the people to forget by id, whatever the source (it replaces `forget_split`'s
    choice); the retain side is everyone else unless `retain_ids` names it. An unknown id is a
    `DataError`, never an empty split. Own data has no forget side without `forget_ids` (everyone is
    retain: enough to fine-tune or evaluate). A world's tuning population is left out of the retain side
    unless `keep_tune` or `forget_ids` (mmunlearn/tune.py).
    `tofu`: a local TOFU folder (CLEAR only) for the text side's truth ratio and the real-authors /
    world-facts sets. Warnings (e.g. CLEAR without TOFU) are printed to stderr, one line each, and
    kept in `bundle.warnings`; per-cell reasons in `bundle.notes`."""
    from .own import own_data_file

    root = Path(root)
    forget_ids = _id_list(forget_ids, "forget")
    retain_ids = _id_list(retain_ids, "retain")
    if retain_ids is not None and forget_ids is None:
        raise DataError("--retain-ids needs --forget-ids (which people to forget)")
    if own_data_file(root) is not None:
        if tofu is not None:
            raise DataError(f"--tofu applies to a CLEAR folder only; {root} is your own data")
        bundle = load_own_bundle(root, forget_ids, retain_ids)
    elif not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist: create a world with `mmunlearn world --out {root}`, "
            "point --data at a local MLLMU-Bench / CLEAR folder, or at your own people.jsonl / .csv"
        )
    elif (root / WORLD_MANIFEST).is_file():
        if tofu is not None:
            raise DataError(f"--tofu applies to a CLEAR folder only; {root} is a world")
        # people chosen by id may be anyone, the tuning population included
        bundle = load_world(root, forget_split, splits, keep_tune=keep_tune or forget_ids is not None)
    else:
        bundle = _load_benchmark(root, forget_split, tofu, test_ids=forget_ids)
    if forget_ids is not None and bundle.source != SOURCE_OWN:
        bundle = select_people(bundle, forget_ids, retain_ids)
    check_disjoint(bundle)
    if bundle.warnings:
        from .clear import print_warnings

        print_warnings(bundle.warnings)
    return bundle


def _load_benchmark(root: Path, forget_split: str, tofu: str | Path | None = None,
                    test_ids: Iterable[str] | None = None) -> DataBundle:
    names = {p.name.split(".")[0].split("-")[0] for p in root.iterdir()}
    if any(n.startswith("ft_Data") or n in ("Test_Set", "Retain_Set", "Full_Set") for n in names):
        from .mllmu import load_mllmu

        if tofu is not None:
            raise DataError(f"--tofu applies to a CLEAR folder only; {root} is an MLLMU-Bench folder")
        splits = load_mllmu(root, forget_split=forget_split, test_ids=test_ids)
        source, notes, warnings = "mllmu", {}, []
    elif any(n.startswith(("forget01", "forget05", "forget10", "real_faces")) for n in names):
        from .clear import load_clear

        clear = load_clear(root, forget_split=forget_split.replace("_", ""), tofu=tofu)
        splits, notes, warnings = clear.splits, clear.notes, clear.warnings
        source = "clear"
    else:
        raise DataError(
            f"{root} is neither a world (no world.json), an MLLMU-Bench folder (ft_Data, forget_N, Test_Set...) "
            "nor a CLEAR folder (forget01/05/10, retain*, real_faces...)"
        )
    forget_ids = {r.profile_id for r in splits.get("forget", [])}
    retain_ids = {r.profile_id for r in splits.get("retain", [])}
    if not forget_ids:
        raise DataError(f"{root}: the forget split {forget_split!r} has no records")
    return DataBundle(source, root, forget_split, splits, forget_ids, retain_ids, notes=notes, warnings=warnings)


# --------------------------------------------------------------------------------------------
# Choosing the forget people by id (--forget-ids / --retain-ids), and your own data
# --------------------------------------------------------------------------------------------

SOURCE_OWN = "own"
# Splits that hold the same kind of records for the two sides; a person moves between them whole.
PAIRED_SPLITS = (("forget", "retain"), ("forget_faces", "retain_faces"))


def _id_list(ids: Iterable[str] | str | None, side: str) -> list[str] | None:
    """Ids as given (order kept, duplicates dropped); a comma-separated string is split. Empty → error."""
    if ids is None:
        return None
    if isinstance(ids, str):
        ids = ids.split(",")
    out = list(dict.fromkeys(str(i).strip() for i in ids if str(i).strip()))
    if not out:
        raise DataError(f"--{side}-ids names no one")
    return out


def parse_ids(value: str | None, side: str = "forget") -> list[str] | None:
    """`--forget-ids` / `--retain-ids`: "ID[,ID…]" or a file of ids (one per line or comma-separated,
    `#` starts a comment). Why a file: a deletion request of hundreds of people is not typed."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--{side}-ids {path}: cannot read the id file ({exc})") from None
        lines = (line.split("#", 1)[0] for line in text.splitlines())
        ids = [part.strip() for line in lines for part in line.split(",") if part.strip()]
        if not ids:
            raise DataError(f"--{side}-ids {path}: the id file names no one")
        return _id_list(ids, side)
    return _id_list(value, side)


def _label(ids: list[str]) -> str:
    """What `forget_split` says for a choice by id (summaries, logs): the ids, or how many."""
    return "ids:" + (",".join(ids) if len(ids) <= 5 else f"{len(ids)} people")


def _check_known(ids: list[str], known: list[str], side: str, where: str) -> None:
    unknown = [i for i in ids if i not in set(known)]
    if unknown:
        shown = ", ".join(known[:8]) + (", …" if len(known) > 8 else "")
        raise DataError(f"{where}: unknown {side} id(s) {', '.join(unknown[:5])} "
                        f"({len(known)} people to choose from: {shown})")


def _split_sides(ids: list[str], retain_ids: list[str] | None, known: list[str], where: str) -> tuple[set, set]:
    _check_known(ids, known, "forget", where)
    if retain_ids is None:
        return set(ids), set(known) - set(ids)
    _check_known(retain_ids, known, "retain", where)
    both = sorted(set(ids) & set(retain_ids))
    if both:
        raise DataError(f"--forget-ids and --retain-ids both name {', '.join(both[:5])}")
    return set(ids), set(retain_ids)


def select_people(bundle: DataBundle, forget_ids: Iterable[str], retain_ids: Iterable[str] | None = None) -> DataBundle:
    """The same data with the forget side chosen by id: the people of forget + retain (and CLEAR's
    *_faces pair) are pooled and re-split. People named on neither side (with `retain_ids`) leave
    both. Other splits stay: the evaluator keeps only forget people of `test`, and `understanding`
    is divided by these ids."""
    ids = _id_list(forget_ids, "forget") or []
    keep = _id_list(retain_ids, "retain")
    pools = {pair: bundle.splits.get(pair[0], []) + bundle.splits.get(pair[1], []) for pair in PAIRED_SPLITS
             if pair[0] in bundle.splits or pair[1] in bundle.splits}
    known = list(dict.fromkeys(r.profile_id for r in pools.get(("forget", "retain"), [])))
    forget, retain = _split_sides(ids, keep, known, str(bundle.root))
    splits = dict(bundle.splits)
    for (f_name, r_name), pool in pools.items():
        splits[f_name] = [r for r in pool if r.profile_id in forget]
        splits[r_name] = [r for r in pool if r.profile_id in retain]
        for name in (f_name, r_name):
            for r in splits[name]:
                r.split = name
    return replace(bundle, forget_split=_label(ids), splits=splits, forget_ids=forget, retain_ids=retain)


def load_own_bundle(path: str | Path, forget_ids: Iterable[str] | None = None,
                    retain_ids: Iterable[str] | None = None) -> DataBundle:
    """Your own people (data/own.py) as a bundle: forget = the `forget_ids` people, retain = the rest
    (or `retain_ids`). Own data has only these two splits; the evaluator skips test, real and
    understanding, which it has no records for."""
    from .own import load_own

    path = Path(path)
    records = load_own(path)
    known = list(dict.fromkeys(r.profile_id for r in records))
    ids = _id_list(forget_ids, "forget")
    if ids is None:
        forget, retain, label = set(), set(known), "none"
    else:
        forget, retain = _split_sides(ids, _id_list(retain_ids, "retain"), known, str(path))
        label = _label(ids)
    splits: dict[str, list[Record]] = {"forget": [], "retain": []}
    for r in records:
        side = "forget" if r.profile_id in forget else "retain" if r.profile_id in retain else None
        if side:
            r.split = side
            splits[side].append(r)
    return DataBundle(SOURCE_OWN, path, label, splits, forget, retain,
                      manifest={"people": len(known), "records": len(records)})
