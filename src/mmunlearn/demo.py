"""`mmunlearn demo`: the main job on the embedded default world, in one call, each stage timed.

world → vanilla model → its evaluation → a bench of several methods → one HTML page.

The vanilla model of the full demo is shipped with the package (src/mmunlearn/assets/vanilla-default/, 6.5 MB):
fitting it is a 13-minute fine-tune on 2 CPU cores (provenance.json's fine_tune_wall_time_s), the demo's budget
is 10 minutes. The folder's provenance.json names the world fingerprint (data/world.fingerprint) and the fine-tune
recipe it was made from; the demo uses the shipped weights only when both match the world it just built and
the recipe it would run, else it fine-tunes (`--refit` always does). `--quick` is a small world and short
schedules (what CI runs): every stage, the same files, in about 3 minutes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .data.errors import DataError

log = logging.getLogger("mmunlearn")

ASSETS = Path(__file__).parent / "assets"
SHIPPED_VANILLA = ASSETS / "vanilla-default"
PROVENANCE = "provenance.json"
DEMO_FILE = "demo.json"
DEMO_METHODS = ("ga", "graddiff", "npo", "idk", "vkd", "smfa", "viker")
QUICK_METHODS = ("ga", "graddiff", "npo", "vkd")


@dataclass
class DemoPlan:
    """What the demo builds: the world's size, the fine-tune's schedule, the bench's methods and steps."""

    quick: bool
    world: dict[str, Any]
    finetune: dict[str, Any]
    methods: list[str]
    max_records: int
    steps: int | None = None  # every method's steps in the bench (None: each method's default)
    forget_split: str = "forget_10"
    method_args: dict[str, dict] = field(default_factory=dict)


def make_plan(quick: bool = False, methods: list[str] | None = None, max_records: int | None = None) -> DemoPlan:
    """The full demo: the default world (100 + 30 real + 20 holdout people) and the default fine-tune recipe.
    The quick one: 6 people, a fine-tune of 300 + 100 + 500 steps, four methods at 20 steps."""
    from .train.defaults import BATCH_SIZE, LR

    if quick:
        plan = DemoPlan(quick=True, world=dict(profiles=6, real=4, holdout=3, seed=0, image_size=32),
                        finetune=dict(stage0_steps=300, stage1_steps=100, stage2_steps=500, batch_size=BATCH_SIZE,
                                      lr=LR, seed=0),
                        methods=list(QUICK_METHODS), max_records=24, steps=20, forget_split="forget_15")
    else:
        plan = DemoPlan(quick=False, world=dict(profiles=100, real=30, holdout=20, seed=0, image_size=32),
                        finetune=dict(stage0_steps=None, stage1_steps=None, stage2_steps=None, batch_size=BATCH_SIZE,
                                      lr=LR, seed=0),
                        methods=list(DEMO_METHODS), max_records=300)
    if methods is not None:
        plan.methods = list(methods)
    if max_records is not None:
        plan.max_records = max_records
    return plan


def shipped_provenance() -> dict | None:
    path = SHIPPED_VANILLA / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None


def recipe(bundle, plan: DemoPlan) -> dict:
    """The fine-tune settings the demo would run on this world (FinetuneConfig, schedules resolved)."""
    from .train.finetune import FinetuneConfig, learning_recipe, scaled_schedule

    ft = dict(plan.finetune)
    schedule = scaled_schedule(bundle, ft["batch_size"], [], ft.pop("stage0_steps"), ft.pop("stage1_steps"),
                               ft.pop("stage2_steps"))
    return learning_recipe(FinetuneConfig(model="tiny-llava", checkpoint_every=0, **ft, **schedule))


def shipped_matches(world_dir: Path, bundle, plan: DemoPlan) -> tuple[bool, str]:
    """Whether the shipped weights were fitted on this very world with this very recipe, and why not."""
    prov = shipped_provenance()
    if prov is None:
        return False, "no shipped weights in this installation"
    manifest = json.loads((world_dir / "world.json").read_text())
    if manifest.get("fingerprint") != prov.get("world_fingerprint"):
        return False, "the world differs from the one the shipped weights were fitted on"
    if recipe(bundle, plan) != prov.get("recipe"):
        return False, "the fine-tune recipe differs from the one the shipped weights were made with"
    return True, "the shipped weights were fitted on this world with this recipe"


def _install_shipped(vanilla: Path) -> None:
    """Copy the shipped folder into OUT/vanilla (atomically: a half-copied folder is never a model)."""
    from .data.store import replace_folder

    tmp = vanilla.with_name(vanilla.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SHIPPED_VANILLA, tmp)
    replace_folder(tmp, vanilla)


def _check_plan(out: Path, plan: DemoPlan, overwrite: bool) -> None:
    """A demo folder continues only the demo it holds: a quick demo's world is not the full demo's."""
    path = out / DEMO_FILE
    if overwrite and out.exists():
        shutil.rmtree(out)
    if path.is_file():
        held = json.loads(path.read_text())
        if held.get("quick") != plan.quick or held.get("world") != plan.world:
            raise DataError(f"{out} holds a{' quick' if held.get('quick') else ' full'} demo; use another --out "
                            "or --overwrite")
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"--out {out} is not empty and holds no demo; use another --out or --overwrite")


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, refit: bool = False,
             methods: list[str] | None = None, max_records: int | None = None, overwrite: bool = False,
             progress: Callable[[str], None] | None = None) -> dict:
    """Run the demo into `out` → {"stages": {stage: seconds}, "report": path, "vanilla": "shipped" | "fitted" |
    "reused"}.

    Whatever an earlier demo in `out` finished (world, vanilla model, bench runs) is reused, so an interrupted
    demo continues where it stopped."""
    from .bench import BenchConfig, run_bench
    from .data.store import atomic_write_json, load_data
    from .methods.base import registry
    from .report.html import write_report
    from .report.tables import nothing_to_forget, numbers_from_summary
    from .workflow import evaluate_into, finetune_run, make_world

    say = progress or log.info
    out = Path(out)
    plan = make_plan(quick, methods, max_records)
    unknown = [m for m in plan.methods if m not in registry()]
    if unknown or not plan.methods:
        raise ValueError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; available: "
                         f"{', '.join(registry())}")
    if plan.max_records < 0:
        raise ValueError(f"--max-records must be 0 (all) or more (got {plan.max_records})")
    _check_plan(out, plan, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / DEMO_FILE, {"quick": plan.quick, "world": plan.world})
    stages: dict[str, float] = {}
    world_dir, vanilla = out / "world", out / "vanilla"

    t = time.perf_counter()
    if not (world_dir / "world.json").is_file():
        make_world(world_dir, overwrite=True, **plan.world)
        say(f"world → {world_dir}")
    stages["world"] = time.perf_counter() - t

    t = time.perf_counter()
    bundle = load_data(world_dir, plan.forget_split)
    stages["load data"] = time.perf_counter() - t

    t = time.perf_counter()
    source = "fitted"
    if not (vanilla / "model.safetensors").is_file() or not (vanilla / "train_log.json").is_file():
        use_shipped, why = (False, "--refit") if refit or plan.quick else shipped_matches(world_dir, bundle, plan)
        if use_shipped:
            _install_shipped(vanilla)
            source = "shipped"
            say(f"vanilla: the shipped weights ({why}) → {vanilla}")
        else:
            if not plan.quick:
                say(f"vanilla: fine-tuning ({why}; about 13 minutes on 2 cores)")
            from .train.finetune import resume_point

            resume = resume_point(vanilla, True)  # an interrupted refit continues from its checkpoint
            finetune_run(data=world_dir, out=vanilla, model="tiny-llava", forget_split=plan.forget_split,
                         checkpoint_every=0 if plan.quick else 500, eval_after=False, overwrite=not resume,
                         resume=resume, **plan.finetune)
    else:
        source = "reused"  # an earlier demo in OUT finished it (shipped or fitted: provenance.json says which)
    stages["vanilla model"] = time.perf_counter() - t

    # The vanilla row of the bench, evaluated before the methods run so that a vanilla which never learned the
    # forget people is reported at once; the bench finds this summary and does not evaluate it again.
    t = time.perf_counter()
    summary_path = out / "bench" / "vanilla" / "eval" / "summary.json"
    if not summary_path.is_file():
        from .models.loader import load_model

        evaluate_into(load_model(vanilla), bundle, summary_path.parent, max_records_per_split=plan.max_records,
                      progress=False)
    summary = json.loads(summary_path.read_text())
    warning = nothing_to_forget({"method": "vanilla", **numbers_from_summary(summary)})
    if warning:
        log.warning(warning)
    stages["vanilla evaluation"] = time.perf_counter() - t

    t = time.perf_counter()
    bench_cfg = BenchConfig(model=str(vanilla), methods=plan.methods, seeds=[0], steps=plan.steps,
                            max_records=plan.max_records, method_args=plan.method_args)
    run_bench(bundle, bench_cfg, out / "bench", progress=say)
    stages["bench"] = time.perf_counter() - t

    t = time.perf_counter()
    report = write_report(out / "bench", out / "report.html")
    stages["report"] = time.perf_counter() - t
    result = {"stages": {k: round(v, 1) for k, v in stages.items()}, "total_s": round(sum(stages.values()), 1),
              "report": str(report), "vanilla": source, "quick": plan.quick}
    atomic_write_json(out / DEMO_FILE, {"quick": plan.quick, "world": plan.world, "last_run": result})
    return result


def stage_table(result: dict) -> str:
    """The demo's stages and their wall times, as printed at its end."""
    rows = [f"  {name:<20s}{seconds:8.1f} s" for name, seconds in result["stages"].items()]
    return "\n".join(["stage                   wall time", *rows, f"  {'total':<20s}{result['total_s']:8.1f} s"])
