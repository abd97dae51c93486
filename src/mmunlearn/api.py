"""The public Python API: the command line's steps as functions on objects held in memory.

Why: a notebook or a script that forgets people should not shell out to `mmunlearn` and parse files.
Each function wraps the engine the CLI uses (data/store.py, train/, eval/evaluator.py, eval/attacks/)
and duplicates none of it, so the numbers are the CLI's numbers.

    from mmunlearn import load_data, load_model, finetune, unlearn, evaluate
    data = load_data("people.jsonl", forget_ids=["p1", "p2"])
    model = finetune(data, "tiny-llava", steps=200)          # or load_model("path/to/hf-folder")
    before = evaluate(model, data)
    unlearn(model, data, method="graddiff", steps=10)         # trains `model` in place
    after = evaluate(model, data)

`import mmunlearn` stays cheap: the package imports this module (and torch) only when one of these
names is first used.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

from .data.errors import DataError
from .data.record import Record
from .data.store import DataBundle
from .data.store import load_data as _load_data
from .data.store import parse_ids
from .eval.evaluator import SPLITS
from .models.base import ModelLoadError
from .models.loader import LoadedModel

__all__ = [
    "DataBundle", "DataError", "LoadedModel", "ModelLoadError", "Record", "attack_probe", "attack_rank",
    "attack_relearn", "evaluate", "finetune", "load_data", "load_model", "unlearn",
]

PathLike = Union[str, Path]
DataSource = Union[DataBundle, PathLike]
ModelSource = Union[LoadedModel, PathLike]
Ids = Union[str, Iterable[str], None]


def _ids(ids: Ids, side: str) -> list[str] | None:
    """A list of ids, "ID,ID" or a file of ids (as on the command line)."""
    if ids is None or not isinstance(ids, str):
        return None if ids is None else [str(i) for i in ids]
    return parse_ids(ids, side)


def load_data(source: PathLike, forget_split: str = "forget_10", *, forget_ids: Ids = None,
              retain_ids: Ids = None, tofu: PathLike | None = None) -> DataBundle:
    """The records of one unlearning problem, from any source the CLI's `--data` takes.

    source: a world folder (`mmunlearn world`), a local MLLMU-Bench or CLEAR folder, or your own people
    (a .jsonl / .json / .csv file or a folder with a metadata file; see data/own.py for the columns).
    forget_ids: who to forget — a list, "p1,p2" or a file of ids; it overrides `forget_split`. The
    retain side is everyone else unless `retain_ids` names it. Own data needs `forget_ids` for anything
    but fine-tuning. Raises `DataError` (one line) for bad rows, unknown ids, missing files.
    """
    return _load_data(source, forget_split, tofu=tofu, forget_ids=_ids(forget_ids, "forget"),
                      retain_ids=_ids(retain_ids, "retain"))


def _bundle(data: DataSource) -> DataBundle:
    return data if isinstance(data, DataBundle) else load_data(data)


def load_model(spec: PathLike, data: DataSource | None = None, *, dtype: str = "auto", device: str | None = None,
               seed: int = 0) -> LoadedModel:
    """A model to unlearn or evaluate: a local Hugging Face folder, or a tiny builder (`tiny-llava`,
    `tiny-qwen2-vl`, `tiny-idefics3`: a freshly initialised ~2 M-parameter model whose tokenizer is
    trained on `data`'s text — why `data` is required then). Never downloads anything."""
    from .models.loader import build_tiny, is_tiny
    from .models.loader import load_model as _load_folder

    if is_tiny(spec):
        if data is None:
            raise ValueError(f"load_model({str(spec)!r}) builds a tiny model: pass data= (its tokenizer is "
                             "trained on the data's text)")
        from .train.finetune import world_corpus

        return build_tiny(str(spec), world_corpus(_bundle(data)), seed=seed)
    return _load_folder(spec, dtype=dtype, device=device)


def _model(model: ModelSource, data: DataBundle) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, data)


@contextmanager
def _run_dir(out: PathLike | None) -> Iterator[Path]:
    """`out` when given (kept: model folder, logs), else a temporary folder removed afterwards — the
    trained model stays in memory either way."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mmunlearn-") as tmp:
        yield Path(tmp)


def finetune(data: DataSource, model: str = "tiny-llava", *, steps: int | None = None, batch_size: int = 16,
             lr: float = 2e-3, seed: int = 0, out: PathLike | None = None, **config: Any) -> LoadedModel:
    """Teach a model the people of `data` (everyone, forget and retain alike, as benchmarks do before
    unlearning) → the fine-tuned model. `steps`: steps on the fictitious or your own people (stage 2; default:
    the default world's 5,000 scaled to the data, as `mmunlearn finetune` does); `config`: any other
    `train.finetune.FinetuneConfig` field (stage1_steps, vision_warmup_steps, warmup_steps…).
    `out`: where the HF folder and train_log.json are saved (default: a temporary folder)."""
    from .train.finetune import FinetuneConfig, scaled_schedule
    from .train.finetune import finetune as _finetune

    _check_fields(FinetuneConfig, config, "finetune")
    bundle = _bundle(data)
    schedule = scaled_schedule(bundle, batch_size, config.get("exclude_ids"), config.pop("vision_warmup_steps", None),
                               config.pop("stage1_steps", None), steps)
    config = {"checkpoint_every": 0, **config}  # no resumable checkpoints unless asked: a script reruns
    cfg = FinetuneConfig(model=str(model), batch_size=batch_size, lr=lr, seed=seed, **schedule, **config)
    with _run_dir(out) as run:
        return _finetune(bundle, cfg, run)["loaded"]


def unlearn(model: ModelSource, data: DataSource, method: str = "graddiff", *, steps: int | None = None,
            lr: float | None = None, batch_size: int = 8, scope: str | None = None, seed: int = 0,
            out: PathLike | None = None, preset: str = "auto", **method_args: Any) -> LoadedModel:
    """Make `model` forget `data`'s forget people with one method (see `mmunlearn methods`) → the
    unlearned model. A loaded model is trained *in place* (no second copy of a large model): evaluate
    it before if you want before/after numbers. scope defaults to the method's; steps/lr to the preset
    the model's size picks (`preset="auto"`: a model of 100M parameters or more gets the method's published
    setting, train/presets.py); `method_args` are the method's options (e.g. beta=0.2). `out`: where the HF
    folder and unlearn_log.json go (its "preset" and "precision" say what was used)."""
    from .methods.base import get_method
    from .train.unlearn import UnlearnConfig
    from .train.unlearn import unlearn as _unlearn

    bundle = _bundle(data)
    if not bundle.forget_ids:
        raise DataError(f"{bundle.root}: no one to forget: load the data with forget_ids=[...]")
    method_cls = get_method(method)
    method_cls.make_config(method_args)  # unknown options fail before any work
    loaded = _model(model, bundle)
    cfg = UnlearnConfig(method=method, model=str(model) if not isinstance(model, LoadedModel) else "",
                        steps=steps, lr=lr, batch_size=batch_size, scope=scope, seed=seed, preset=preset,
                        method_args=dict(method_args))
    with _run_dir(out) as run:
        return _unlearn(bundle, cfg, run, loaded=loaded).loaded


def evaluate(model: ModelSource, data: DataSource, *, splits: Sequence[str] = SPLITS, batch_size: int = 64,
             max_records: int = 0, reference_summary: PathLike | None = None, out: PathLike | None = None,
             progress: bool = False) -> dict:
    """Score a model on `data` with the CLI's evaluator → the summary dict
    `{"metrics": {split: {modality: {metric: value, "n": count}}}, "config", "timing"[, "skipped"]}`.

    Splits the data has no records for (own data: test, real, understanding) are left out of
    "metrics" and listed in "skipped". `out`: also write summary.json + details.jsonl there."""
    from .eval.evaluator import EvalConfig, write_results
    from .eval.evaluator import evaluate as _evaluate

    bundle = _bundle(data)
    loaded = _model(model, bundle)
    cfg = EvalConfig(splits=tuple(splits), batch_size=batch_size, max_records_per_split=max_records,
                     reference_summary=str(reference_summary) if reference_summary else None, progress=progress)
    summary, details = _evaluate(loaded, bundle, cfg)
    if bundle.notes:
        summary["notes"] = dict(bundle.notes)
    if out is not None:
        write_results(Path(out), summary, details)
    return summary


def _check_fields(cls: type, given: dict, what: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{what}() got unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")


def _attack(run, cfg, model: ModelSource, data: DataSource, out: PathLike | None, **kwargs: Any) -> dict:
    from .eval.evaluator import write_results

    bundle = _bundle(data)
    summary, details = run(_model(model, bundle), bundle, cfg, **kwargs)
    if out is not None:
        write_results(Path(out), summary, details)
    return summary


def attack_relearn(model: ModelSource, data: DataSource, *, floor: ModelSource | None = None,
                   out: PathLike | None = None, **config: Any) -> dict:
    """Relearning attack: fine-tune copies of `model` on r% of the forget QA and measure how much
    held-out knowledge comes back (summary: before, recovery per ratio, AG). `floor`: a retain-only
    model given the same budget. `config`: `eval.attacks.relearn.RelearnConfig` fields (ratios, steps…)."""
    from .eval.attacks.relearn import RelearnConfig, relearn_attack

    _check_fields(RelearnConfig, config, "attack_relearn")
    return _attack(relearn_attack, RelearnConfig(**config).validate(), model, data, out, floor=floor)


def attack_probe(model: ModelSource, data: DataSource, *, out: PathLike | None = None, **config: Any) -> dict:
    """Text-only, transformed-photo, paraphrase and prompt-attack probes plus membership inference
    (summary: leak per probe, MIA AUCs). `config`: `eval.attacks.probe.ProbeConfig` fields."""
    from .eval.attacks.probe import ProbeConfig, run_probe

    _check_fields(ProbeConfig, config, "attack_probe")
    return _attack(run_probe, ProbeConfig(**config), model, data, out)


def attack_rank(model: ModelSource, data: DataSource, *, out: PathLike | None = None, **config: Any) -> dict:
    """Identity ranking: every known name ranked by likelihood on unseen photos of the forget, retain
    and holdout people (summary: top-1/top-5/MRR per group). `config`: `eval.attacks.rank.RankConfig`."""
    from .eval.attacks.rank import RankConfig, run_rank

    _check_fields(RankConfig, config, "attack_rank")
    return _attack(run_rank, RankConfig(**config).validate(), model, data, out)
