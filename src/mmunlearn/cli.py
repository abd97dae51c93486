"""`mmunlearn` — one command line. Each command parses its options, calls one library function
(mmunlearn/workflow.py, demo.py) and says where the results went; no command calls another's function.

Messages go through the `mmunlearn` logger (INFO to stdout, warnings and errors to stderr). Bad input is one
`error:` line and exit code 2 (`--debug`, anywhere on the line, shows the traceback).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .train.defaults import BATCH_SIZE, CHECKPOINT_EVERY, LR, STAGE1_STEPS, STAGE2_STEPS, VISION_WARMUP_STEPS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a multimodal LLM forget chosen people, keep everything else, prove both with numbers.")

DEFAULT_WORLD = Path("runs/world")
_DEBUG = {"on": bool(os.environ.get("MMUNLEARN_DEBUG"))}


@app.callback()
def _main_options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error "
                                              "(also accepted anywhere on the line, or MMUNLEARN_DEBUG=1)."),
                  quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only.")) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug
    _setup_logging(logging.WARNING if quiet else logging.INFO)


class _EchoHandler(logging.Handler):
    """Log records printed with typer.echo at the moment they are emitted (so a test runner's captured
    streams receive them): INFO on stdout, WARNING and above on stderr as `warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            prefix = "" if message.startswith(("warning:", "note:", "error:")) else "warning: "
            typer.echo(prefix + message, err=True)
        else:
            typer.echo(message)


def _setup_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("mmunlearn")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(level)
    logger.propagate = False


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def guarded(fn):
    """Known failures (bad data, unloadable model, NaN loss, bad option...) become one `error:` line and exit
    code 2; anything else one line and exit code 1. --debug prints the traceback first."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .data.errors import DataError
        from .data.record import RecordError
        from .models.base import ModelLoadError
        from .train.loop import NonFiniteLossError

        _quiet_libraries()
        _setup_logging(logging.getLogger("mmunlearn").level or logging.INFO)
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (DataError, RecordError, ModelLoadError, NonFiniteLossError, FileNotFoundError, ValueError,
                TypeError) as exc:
            if _DEBUG["on"]:
                import traceback

                traceback.print_exc()
            _fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        except KeyboardInterrupt:
            # Results are written last and atomically, so an interrupted run leaves no summary.json.
            typer.echo("error: interrupted before the run finished; --out holds no final results", err=True)
            raise typer.Exit(code=130) from None
        except Exception as exc:  # a bug: one line, and the way to see more
            if _DEBUG["on"]:
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            typer.echo(f"error: {exc.__class__.__name__}: {first} (run again with --debug for the traceback)",
                       err=True)
            raise typer.Exit(code=1) from None

    return wrapper


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:  # pragma: no cover
        pass


# ---- options shared by several commands ------------------------------------------------------------------

# Who to forget, by id, from any source (world, MLLMU-Bench, CLEAR, your own people.jsonl/.csv):
# shared by every command that takes --data, so they all choose people the same way.
FORGET_IDS = typer.Option(None, "--forget-ids", help="People to forget: ID[,ID…] or a file of ids (one per line); "
                          "overrides --forget-split. Required for your own data (.jsonl/.csv).")
RETAIN_IDS = typer.Option(None, "--retain-ids", help="Retain people: ID[,ID…] or a file (default: everyone not "
                          "in --forget-ids).")
DATA_HELP = "World, MLLMU-Bench or CLEAR folder, or your own people (.jsonl / .csv / folder with metadata.jsonl)."
LOG_WITH_HELP = ("Track losses and the learning rate with one of accelerate's trackers (tensorboard, wandb, mlflow, "
                 "trackio, comet_ml, aim, clearml, dvclive, swanlab...; logs under OUT/logs/).")
MAX_RECORDS_HELP = "Records per split in the evaluation, a seeded subsample (0: all)."
CHECKPOINT_HELP = "Save a resumable checkpoint every N optimiser steps (0: never); --resume continues from it."
STAGE_HELP = ("Steps of stage {n} ({what}; default: {cap:,} on the default world, scaled to smaller data: "
              "40 passes over its records, see docs/concepts/tiny-models.md).")


def _debug_flag_anywhere(argv: list[str]) -> list[str]:
    """`--debug` anywhere on the line (typer wants it before the command name): taken out, switched on."""
    if "--debug" in argv[1:]:
        _DEBUG["on"] = True
        argv = argv[:1] + [a for a in argv[1:] if a != "--debug"]
    return argv


# ---- world, finetune, retain-model -----------------------------------------------------------------------

@app.command()
@guarded
def world(
    out: Path = typer.Option(..., "--out", help="Folder to create (must be empty or absent)."),
    profiles: int = typer.Option(100, help="Fictitious profiles (forget + retain people), at least 3."),
    real: int = typer.Option(30, help="'Real' people learned in an earlier pre-training stage."),
    holdout: int = typer.Option(20, help="Never-trained people (membership inference, identity ranking)."),
    seed: int = typer.Option(0),
    image_size: int = typer.Option(32, help="Portrait size in pixels (16–128)."),
    train_phrasings: Optional[int] = typer.Option(
        None, help="Training records per (fact, task, modality), each its own phrasing (default: the world's)."),
    identity: str = typer.Option("look", help="What makes a person: 'look' (face, hair, accessory, shirt) or 'face' "
                                 "(face, hair, facial hair; shirt and accessory change from photo to photo)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Create the synthetic world: people, drawn portraits, QA splits (same seed → identical bytes)."""
    import time

    from .workflow import make_world

    t = time.perf_counter()
    made = make_world(out, profiles=profiles, real=real, holdout=holdout, seed=seed, image_size=image_size,
                      train_phrasings=train_phrasings, identity=identity, overwrite=overwrite)
    logging.getLogger("mmunlearn").info(
        f"world with {made['people']} people and {sum(made['records'].values())} records written to {out} "
        f"({time.perf_counter() - t:.1f}s)")


@app.command()
@guarded
def finetune(
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    model: str = typer.Option("tiny-llava", help="HF folder or tiny builder (tiny-llava, tiny-qwen2-vl, tiny-idefics3)."),
    out: Path = typer.Option(..., "--out", help="Run folder; the fine-tuned model is saved at its root."),
    forget_split: str = typer.Option("forget_10", help="Who the forget people are (only labels them: everyone is "
                                     "learned); OUT/eval then has a forget row to compare an unlearned model with."),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    stage0_steps: Optional[int] = typer.Option(
        None, "--stage0-steps", help=f"Steps of stage 0, tiny models only: describing freshly drawn portraits of "
        f"random looks, so the model can see before it learns people (default: {VISION_WARMUP_STEPS:,}, or stage "
        "2's steps if fewer; 0: skip)."),
    stage1_steps: Optional[int] = typer.Option(
        None, "--stage1-steps", help=STAGE_HELP.format(n=1, what="the world's 'real' people", cap=STAGE1_STEPS)),
    stage2_steps: Optional[int] = typer.Option(
        None, "--stage2-steps", help=STAGE_HELP.format(n=2, what="the fictitious or your own people",
                                                        cap=STAGE2_STEPS)),
    batch_size: int = typer.Option(BATCH_SIZE, help="Per process (cut to what the records fill)."),
    lr: float = typer.Option(LR),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(CHECKPOINT_EVERY, help=CHECKPOINT_HELP),
    log_with: Optional[str] = typer.Option(None, "--log-with", help=LOG_WITH_HELP),
    eval_after: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the fine-tuned model into OUT/eval."),
    max_records: int = typer.Option(0, help=MAX_RECORDS_HELP),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT (from its last checkpoint)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Vanilla fine-tune: stage 0 learns to see (tiny models), stage 1 the 'real' people, stage 2 everyone else."""
    params = dict(locals())
    from .workflow import finetune_run

    finetune_run(**params)


@app.command("retain-model")
@guarded
def retain_model(
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    model: str = typer.Option("tiny-llava", help="HF folder or tiny builder."),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10", help="The people this model never sees."),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    stage0_steps: Optional[int] = typer.Option(None, "--stage0-steps", help="As for `finetune`."),
    stage1_steps: Optional[int] = typer.Option(None, "--stage1-steps", help="As for `finetune`."),
    stage2_steps: Optional[int] = typer.Option(None, "--stage2-steps", help="As for `finetune`."),
    batch_size: int = typer.Option(BATCH_SIZE),
    lr: float = typer.Option(LR),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(CHECKPOINT_EVERY, help=CHECKPOINT_HELP),
    log_with: Optional[str] = typer.Option(None, "--log-with", help=LOG_WITH_HELP),
    eval_after: bool = typer.Option(True, "--eval/--no-eval"),
    max_records: int = typer.Option(0, help=MAX_RECORDS_HELP),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT (from its last checkpoint)."),
    overwrite: bool = typer.Option(False),
) -> None:
    """The retain-only reference: the same fine-tune without the forget people (forget_quality, NPO ref)."""
    params = dict(locals())
    from .workflow import retain_model_run

    retain_model_run(**params)


# ---- eval, unlearn --------------------------------------------------------------------------------------

@app.command("eval")
@guarded
def eval_cmd(
    model: Path = typer.Option(..., "--model", help="HF model folder (e.g. a finetune/unlearn run folder), or a "
                               "tiny builder (tiny-llava…: an untrained baseline whose tokenizer is fit on --data)."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for summary.json and details.jsonl (empty or absent)."),
    forget_split: str = typer.Option("forget_10", help="forget_5 | forget_10 | forget_15 (CLEAR: forget01/05/10)."),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    reference_summary: Optional[Path] = typer.Option(None, help="summary.json of a retain-only model → forget_quality."),
    splits: str = typer.Option("forget,test,retain,real,understanding,understanding_unseen",
                               help="Comma-separated splits to score (those the data lacks are skipped)."),
    batch_size: int = typer.Option(64),
    max_records: int = typer.Option(0, help=MAX_RECORDS_HELP),
    dtype: str = typer.Option("auto", help="auto (the folder's dtype) | bf16 | fp16 | fp32."),
    truth_ratio: str = typer.Option("geometric", "--truth-ratio", help="How the perturbed answers' probabilities "
                                    "are averaged: geometric (as the TOFU / CLEAR / open-unlearning code) | "
                                    "arithmetic (the TOFU paper's formula)."),
    tofu: Optional[Path] = typer.Option(None, "--tofu", help="CLEAR only: a local TOFU folder (forgetNN_perturbed, "
                                        "retain_perturbed, real_authors_perturbed, world_facts_perturbed) for the "
                                        "text truth ratio and the real-authors / world-facts sets."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Evaluate a model: MLLMU-Bench / CLEAR metrics per split × modality → OUT/summary.json.

    Runs on the GPU when there is one, in the folder's dtype unless --dtype says otherwise. Launched on
    several processes (torchrun, accelerate launch) each scores its share of the records."""
    params = dict(locals())
    from .workflow import eval_run

    eval_run(**params)


@app.command()
@guarded
def unlearn(
    method: str = typer.Option(..., "--method", help="Method name (see `mmunlearn methods`)."),
    model: Path = typer.Option(..., "--model", help="The fine-tuned HF folder to unlearn from (or a LoRA "
                               "run's OUT/adapter folder)."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default: the method's)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the method's)."),
    batch_size: int = typer.Option(8, help="Per process (cut to what the forget records fill)."),
    scope: Optional[str] = typer.Option(None, help="full | lora | vision | language (default: the method's)."),
    seed: int = typer.Option(0),
    reference: Optional[Path] = typer.Option(None, help="Retain-only model folder (NPO's reference)."),
    reference_summary: Optional[Path] = typer.Option(None, help="Retain-only model's eval summary → forget_quality."),
    set_items: list[str] = typer.Option([], "--set", help="Method option KEY=VALUE (repeatable), e.g. --set beta=0.2"),
    config: Optional[Path] = typer.Option(None, "--config", help="A tuned.json (`mmunlearn tune`: the settings "
                                          "it chose for --method) or a YAML file with lr, steps and set; "
                                          "--lr, --steps and --set override it."),
    lora_r: int = typer.Option(8),
    lora_alpha: int = typer.Option(16),
    checkpoint_every: int = typer.Option(CHECKPOINT_EVERY, help=CHECKPOINT_HELP),
    dtype: str = typer.Option("auto", help="Weights as loaded: auto (the folder's) | bf16 | fp16 | fp32."),
    mixed_precision: Optional[str] = typer.Option(None, "--mixed-precision", help="Autocast: no | bf16 | fp16 "
                                                  "(default: the launcher's config, else the weights' half dtype, "
                                                  "else no)."),
    pure_bf16: bool = typer.Option(False, "--pure-bf16", help="Train bf16 weights in bf16 (no fp32 master copy: "
                                   "less memory, updates below 2^-8 of a weight are lost)."),
    preset: str = typer.Option("auto", "--preset", help="Default lr/steps: auto (by model size) | tiny | real "
                               "(the method's paper setting; docs/scale.md)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimiser step."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
    log_with: Optional[str] = typer.Option(None, "--log-with", help=LOG_WITH_HELP + " Evaluations too."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate a subsample every N steps and after the "
                                   "last (0: never); the numbers go into unlearn_log.json."),
    max_records: int = typer.Option(64, "--max-records", "--eval-records",
                                    help="Records per split in those evaluations (0: all)."),
    eval_splits: str = typer.Option("forget,retain", "--eval-splits", help="Splits those evaluations score "
                                    "(the --select-by rule's are added)."),
    select_by: Optional[str] = typer.Option(None, "--select-by", help="Which evaluated step to keep, e.g. "
                                            "min:forget/image+text/cls_acc,retain/image+text/cls_acc>=0.9 "
                                            "(default: the last). See docs/run-folders.md."),
    eval_after: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the unlearned model into OUT/eval."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT (from its last checkpoint)."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Unlearn the forget people with one method → model at OUT, unlearn_log.json, OUT/eval/summary.json.

    On several processes launch it with `torchrun --nproc_per_node N -m mmunlearn unlearn ...` or
    `accelerate launch --config_file configs/accelerate/<ddp|fsdp2|...>.yaml -m mmunlearn unlearn ...`;
    --batch-size is per process."""
    params = dict(locals())
    from .workflow import unlearn_run

    unlearn_run(**params)


@app.command()
def methods(
    space: bool = typer.Option(False, "--space", help="Also show what `mmunlearn tune` searches per method."),
) -> None:
    """List the unlearning methods: scope, learning rate and steps of both presets (tiny builds; real checkpoints,
    with the source of the setting) and every option (--set KEY=VALUE) with its default."""
    from dataclasses import fields

    from .methods.base import registry

    for name, cls in registry().items():
        typer.echo(f"{name:12s} {cls.summary}  [scope {cls.default_scope}; tiny preset: lr {cls.default_lr:g}, "
                   f"steps {cls.default_steps}; real preset: lr {cls.real_lr:g}, {cls.real_epochs:g} epoch(s)]")
        typer.echo(f"{'':12s}   real preset from {cls.real_source}")
        options = ", ".join(f"{f.name}={getattr(cls.Config(), f.name)!r}" for f in fields(cls.Config))
        if options:
            typer.echo(f"{'':12s}   --set {options}")
        if space:
            for key, spec in cls.tuning_space().items():
                if key == "steps":  # the budget, not the preset, sets the top: it depends on the data
                    typer.echo(f"{'':12s}   tune steps: log [top/4, top], top = the most steps whose trained "
                               "samples fit the tune's --budget (default: the mean of every method's preset)")
                    continue
                kind = "log " if spec[0] == "log" or spec[-1] == "log" else ""
                values = spec[1] if spec[0] == "cat" else f"[{spec[1]:g}, {spec[2]:g}]"
                typer.echo(f"{'':12s}   tune {key}: {kind}{values}")


@app.command()
@guarded
def rerun(
    run: Path = typer.Argument(..., help="A finished (or started) unlearn, finetune or retain-model run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the new run (must be empty or absent)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Repeat a run from its OUT/run.json: the same command, inputs and options, into a new --out."""
    from .workflow import rerun as run_again

    run_again(run, out, overwrite=overwrite)


@app.command()
@guarded
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    quick: bool = typer.Option(False, "--quick", help="A 6-person world, short schedules and four methods: every "
                               "stage and file of the demo in about 3 minutes (what CI runs)."),
    refit: bool = typer.Option(False, "--refit", help="Fine-tune the vanilla model (13 min on 2 cores) instead of "
                               "using the weights shipped for the default world."),
    methods_: Optional[str] = typer.Option(None, "--methods", help="Methods the demo bench runs (default: ga, "
                                           "graddiff, npo, idk, vkd, smfa, viker; quick: ga, graddiff, npo, vkd)."),
    max_records: Optional[int] = typer.Option(None, help="Evaluation subsample per split (default 300; quick 24)."),
    overwrite: bool = typer.Option(False, help="Start again in a non-empty --out."),
) -> None:
    """The main job on the embedded default: world → vanilla model → evaluate → unlearn with several methods
    → OUT/report.html, each stage timed.

    The default world's vanilla model is shipped with the package (fitted with the default recipe on this very
    world; its provenance is checked), so the full demo runs in about 10 minutes on 2 cores. Reuses whatever an
    earlier demo in OUT finished."""
    from .demo import run_demo, stage_table
    from .workflow import split_list

    result = run_demo(out, quick=quick, refit=refit, methods=list(split_list(methods_)) if methods_ else None,
                      max_records=max_records, overwrite=overwrite)
    log = logging.getLogger("mmunlearn")
    log.info(stage_table(result))
    where = {"shipped": "the weights shipped with the package", "fitted": "fine-tuned here",
             "reused": f"reused from the earlier demo in {out}"}
    log.info(f"vanilla model: {where[result['vanilla']]}")
    log.info(f"demo report (open it in a browser) → {result['report']}")


# ---- attacks -------------------------------------------------------------------------------------------

attack_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Attacks on the forgetting: relearning, probing, membership inference, identity ranking.")
app.add_typer(attack_app, name="attack")


@attack_app.command("relearn")
@guarded
def attack_relearn(
    model: Path = typer.Option(..., "--model", help="The (unlearned) HF model folder to attack."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Results folder: summary.json, details.jsonl, config.json."),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    ratios: str = typer.Option("5,10,25,50", help="Percentages of the attack pool to relearn from."),
    steps: int = typer.Option(30, help="Fixed fine-tuning budget per ratio (optimiser steps)."),
    lr: float = typer.Option(5e-4),
    batch_size: int = typer.Option(8),
    scope: str = typer.Option("full", help="full | lora | vision | language."),
    split: str = typer.Option("phrasing", help="phrasing: probe = eval phrasings of all forget facts; "
                                                "facts: probe = held-out facts the attack never states."),
    seed: int = typer.Option(0),
    floor_model: Optional[Path] = typer.Option(None, "--floor-model",
                                               help="Retain-only model: the same budget gives the floor."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Relearning attack: fine-tune on r% of the forget QA, recovery of held-out probe accuracy, AG."""
    params = dict(locals())
    from .workflow import relearn_run

    relearn_run(**params)


@attack_app.command("probe")
@guarded
def attack_probe(
    model: Path = typer.Option(..., "--model", help="The (unlearned) HF model folder to probe."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    batch_size: int = typer.Option(64),
    mia_k: float = typer.Option(0.2, help="Min-K% Prob fraction for membership inference, in (0, 1]."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Text-only, transformed-photo, paraphrase and prompt-attack probes + membership inference (AUC)."""
    params = dict(locals())
    from .workflow import probe_run

    probe_run(**params)


@attack_app.command("rank")
@guarded
def attack_rank(
    model: Path = typer.Option(..., "--model", help="The (unlearned) HF model folder to attack."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out"),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    photos: Optional[str] = typer.Option(None, help="Split whose photos of the forget / retain people are ranked "
                                         "(default: test, the unseen photos; own data: its forget and retain photos)."),
    question: Optional[str] = typer.Option(None, help="Name question (default: the world's evaluation phrasing)."),
    answer_template: Optional[str] = typer.Option(None, help="Candidate answer with {name} (default: the world's "
                                                  "'The name is {name}.'; '{name}' elsewhere)."),
    retain_people: int = typer.Option(10, help="Retain people ranked too (seeded sample; 0: none, -1: all)."),
    holdout: bool = typer.Option(True, "--holdout/--no-holdout", help="Rank the never-trained people's photos."),
    batch_size: int = typer.Option(1024, help="(photo, candidate) pairs per forward."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Identity ranking: every known name ranked by likelihood after a name question on unseen photos."""
    params = dict(locals())
    from .workflow import rank_run

    rank_run(**params)


# ---- bench, tune, report ---------------------------------------------------------------------------------

@app.command()
@guarded
def bench(
    model: Path = typer.Option(..., "--model", help="The fine-tuned (vanilla) HF folder every method starts from."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Bench folder (reused: finished runs are not redone)."),
    methods: str = typer.Option("all", "--methods", help="Comma-separated method names, or 'all'."),
    forget_split: str = typer.Option("forget_10"),
    forget_ids: Optional[str] = FORGET_IDS,
    retain_ids: Optional[str] = RETAIN_IDS,
    seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2."),
    default_seeds: Optional[str] = typer.Option(None, "--default-seeds", help="With --tuned: the defaults' block on "
                                                "these seeds only (default: --seeds)."),
    steps: Optional[int] = typer.Option(None, help="Override every method's step count."),
    batch_size: int = typer.Option(8, help="Per process, every run (cut to what the forget records fill)."),
    max_records: int = typer.Option(0, help=MAX_RECORDS_HELP),
    reference_summary: Optional[Path] = typer.Option(None, help="Retain-only model's summary.json → forget_quality."),
    attacks: bool = typer.Option(False, "--attacks/--no-attacks", help="Add relearn AG, text-probe leak, MIA AUC, "
                                 "identity rank."),
    floor_model: Optional[Path] = typer.Option(None, "--floor-model", help="With --attacks: a retain-only model "
                                               "(`mmunlearn retain-model`) relearned the same way → 'relearn over "
                                               "floor' (what the attack data alone does not explain)."),
    relearn_ratios: str = typer.Option("5,10,25,50", "--relearn-ratios", help="With --attacks: percentages of the "
                                       "forget people's QA the relearning attack fine-tunes on."),
    relearn_steps: int = typer.Option(20, "--relearn-steps", help="With --attacks: the relearning attack's steps "
                                      "per ratio."),
    readme: Optional[Path] = typer.Option(None, help="Also write the table into this README between bench markers."),
    workers: int = typer.Option(1, "--workers", help="Runs side by side, each in a process of its own with one "
                                "torch thread; e.g. 2 on 2 cores."),
    tuned: Optional[Path] = typer.Option(None, "--tuned", help="A tuned.json (`mmunlearn tune`): every method it "
                                         "tuned also gets 'METHOD (tuned)' rows, before the defaults."),
    log_with: Optional[str] = typer.Option(None, "--log-with", help=LOG_WITH_HELP + " One log per run."),
) -> None:
    """Run every method × seed with evaluation (and attacks) → results.json / results.csv + table."""
    params = dict(locals())
    from .workflow import bench_run

    bench_run(**params)


@app.command()
@guarded
def tune(
    model: Path = typer.Option(..., "--model", help="The fine-tuned (vanilla) HF folder every trial starts from."),
    data: Path = typer.Option(..., "--data", "--world", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Tune folder (fresh): tuned.json and each trial's logs."),
    methods: str = typer.Option("all", "--methods", help="Comma-separated method names, or 'all'."),
    trials: int = typer.Option(16, "--trials", help="Trials per method (the same number for every method)."),
    budget: int = typer.Option(0, "--budget", help="Trained samples a trial may use (steps × batch, stages "
                               "summed), the same for every method; 0: the mean of every method's default "
                               "schedule (docs/tuning.md)."),
    seed: int = typer.Option(100, help="The tuning seed (report with other seeds)."),
    max_records: int = typer.Option(64, "--max-records", "--eval-records", help="Questions each trial is scored "
                                    "on, per split, modality and task the rule reads (seeded)."),
    workers: int = typer.Option(1, "--workers", help="Processes tuning methods side by side (one torch thread "
                                "each); e.g. 2 on 2 cores."),
    rule: Optional[str] = typer.Option(None, "--rule", help="Selection rule (default: tune.DEFAULT_RULE, see the "
                                       "README and docs/tuning.md); constraints may be relative to vanilla: >=0.95x; "
                                       "identity/image+text/top5 (top1, mrr, median_rank) reads the name ranking."),
    tune_forget_ids: Optional[str] = typer.Option(None, "--tune-forget-ids", help="People to forget while tuning "
                                                  "(default: the world's tuning population)."),
    tune_retain_ids: Optional[str] = typer.Option(None, "--tune-retain-ids", help="People whose kept knowledge "
                                                  "scores the trials (with --tune-forget-ids)."),
    set_items: list[str] = typer.Option([], "--set", help="Method option KEY=VALUE (repeatable) every trial uses, "
                                        "left out of the search, e.g. --set augment=1.0 (every tuned method needs it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted tune in --out (the same "
                                "settings): its tuned methods are kept, the others searched."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Search every method's settings (optuna, the same trials and compute budget, one selection rule) on a tuning
    population no reported run uses → OUT/tuned.json for `bench --tuned` and `unlearn --config`."""
    params = dict(locals())
    from .workflow import tune_run

    tune_run(**params)


@app.command()
@guarded
def report(
    results: Path = typer.Argument(..., help="A bench results.json or bench folder, a run folder, or a tuned.json."),
    readme: Optional[Path] = typer.Option(None, help="Write the table into this README between markers."),
    name: str = typer.Option("bench", help="Marker name: <!-- NAME:start --> … <!-- NAME:end -->."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write one self-contained HTML page here "
                                       "(table, trade-off, per-split bars, relearning and loss curves, per person)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="A tuned.json only: draw its trade-off (every trial, "
                                        "each method's choice) into this PNG."),
    tuned_only: bool = typer.Option(False, "--tuned-only", help="With --readme: vanilla and the '(tuned)' rows "
                                    "only (a short README; the full table goes elsewhere)."),
    bench: Optional[Path] = typer.Option(None, "--bench", help="A tuned.json only: a bench run with --tuned (folder "
                                         "or results.json); adds whether the tuned settings hold on its people."),
) -> None:
    """Print (or write into a README) the table of a bench results.json or a tune's tuned.json — from files
    only; --out: an HTML page (bench or run); --plot: a tune's trade-off PNG."""
    params = dict(locals())
    from .workflow import report_run

    report_run(**params)


def main() -> None:
    _setup_logging()
    sys.argv = _debug_flag_anywhere(sys.argv)
    app()


if __name__ == "__main__":
    main()
