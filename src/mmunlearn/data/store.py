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
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .record import Record, RecordError, records_to_dataset

WORLD_MANIFEST = "world.json"


def check_out_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse an --out that is a file, or a non-empty folder without --overwrite/--resume (changes nothing)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite and not resume:
        raise DataError(f"--out {out} is not empty; pass --overwrite to replace it (or --resume to continue a run)")
    return out


def prepare_out_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """A run folder is created fresh: a non-empty one is refused unless --overwrite/--resume."""
    out = check_out_dir(out, overwrite=overwrite, resume=resume)
    if out.exists() and any(out.iterdir()) and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename, so a reader never sees a half-written results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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


def load_world(root: Path, forget_split: str = "forget_10", splits: tuple[str, ...] | None = None) -> DataBundle:
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
               "understanding": "understanding", "holdout": "holdout", "pretrain": "pretrain", "finetune": "finetune"}
    wanted = splits or tuple(mapping)
    out: dict[str, list[Record]] = {}
    for key in wanted:
        path = root / "data" / f"{mapping[key]}.parquet"
        if not path.is_file():
            raise DataError(f"{path} is missing: the world folder is incomplete (re-create it with `mmunlearn world`)")
        out[key] = read_parquet_records(path)
    forget_ids = set(manifest["ids"][forget_split])
    retain_ids = set(manifest["ids"][retain_split])
    return DataBundle("world", root, forget_split, out, forget_ids, retain_ids, manifest)


def check_disjoint(bundle: DataBundle) -> None:
    overlap = bundle.forget_ids & bundle.retain_ids
    if overlap:
        raise DataError(f"forget and retain sets overlap on {len(overlap)} id(s): {', '.join(sorted(overlap)[:5])}")


def load_data(root: str | Path, forget_split: str = "forget_10", splits: tuple[str, ...] | None = None,
              tofu: str | Path | None = None) -> DataBundle:
    """Open a world folder, an MLLMU-Bench folder or a CLEAR folder (detected from its files).

    `tofu`: a local TOFU folder (CLEAR only) for the text side's truth ratio and the real-authors /
    world-facts sets. Warnings (e.g. CLEAR without TOFU) are printed to stderr, one line each, and
    kept in `bundle.warnings`; per-cell reasons in `bundle.notes`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist: create a world with `mmunlearn world --out {root}` "
            "or point --data at a local MLLMU-Bench / CLEAR folder"
        )
    if (root / WORLD_MANIFEST).is_file():
        if tofu is not None:
            raise DataError(f"--tofu applies to a CLEAR folder only; {root} is a world")
        bundle = load_world(root, forget_split, splits)
    else:
        bundle = _load_benchmark(root, forget_split, tofu)
    check_disjoint(bundle)
    if bundle.warnings:
        from .clear import print_warnings

        print_warnings(bundle.warnings)
    return bundle


def _load_benchmark(root: Path, forget_split: str, tofu: str | Path | None = None) -> DataBundle:
    names = {p.name.split(".")[0].split("-")[0] for p in root.iterdir()}
    if any(n.startswith("ft_Data") or n in ("Test_Set", "Retain_Set", "Full_Set") for n in names):
        from .mllmu import load_mllmu

        if tofu is not None:
            raise DataError(f"--tofu applies to a CLEAR folder only; {root} is an MLLMU-Bench folder")
        splits = load_mllmu(root, forget_split=forget_split)
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
