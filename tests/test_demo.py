"""The full demo's shipped vanilla model (src/mmunlearn/assets/vanilla-default/): fitted on the very world
`mmunlearn demo` builds, with the recipe it would run, and a model that knows the forget people. When the world
generator or the fine-tune recipe changes, these tests fail (the demo would quietly fine-tune for 13 minutes
instead): refit and ship again with the commands in benchmarks/ship_vanilla.py's docstring."""

from __future__ import annotations

import json

import pytest

from mmunlearn.demo import PROVENANCE, SHIPPED_VANILLA, _install_shipped, make_plan, shipped_matches


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The world the full demo builds (the default sizes, seed 0): about 20 s."""
    from mmunlearn.data.store import load_data
    from mmunlearn.workflow import make_world

    plan = make_plan()
    out = tmp_path_factory.mktemp("default") / "world"
    make_world(out, overwrite=True, **plan.world)
    return out, load_data(out, plan.forget_split)


def test_the_shipped_weights_were_fitted_on_this_world_with_the_demo_recipe(default_world):
    world, bundle = default_world
    ok, why = shipped_matches(world, bundle, make_plan())
    assert ok, f"{why}: refit and ship them (benchmarks/ship_vanilla.py)"
    provenance = json.loads((SHIPPED_VANILLA / PROVENANCE).read_text())
    log = json.loads((SHIPPED_VANILLA / "train_log.json").read_text())
    made = {k: v for k, v in log["config"].items() if k not in ("checkpoint_every", "log_with")}
    assert made == provenance["recipe"]  # the weights are the run the provenance describes
    assert provenance["world_config"] == json.loads((world / "world.json").read_text())["config"]


def test_another_world_or_recipe_is_fine_tuned(default_world, small_world):
    from mmunlearn.data.store import load_data

    world, bundle = default_world
    ok, why = shipped_matches(small_world, load_data(small_world, "forget_15"), make_plan())
    assert (ok, why) == (False, "the world differs from the one the shipped weights were fitted on")
    plan = make_plan()
    plan.finetune["lr"] = 1e-3
    ok, why = shipped_matches(world, bundle, plan)
    assert (ok, why) == (False, "the fine-tune recipe differs from the one the shipped weights were made with")


def test_the_shipped_model_installs_and_knows_the_forget_people(default_world, tmp_path):
    """The demo measured forget image+text 0.91 (52 of 57) and retain 1.00 on 300-record samples; a 40-record
    sample must stay well above chance (0.25) on both."""
    from mmunlearn.eval.evaluator import EvalConfig, evaluate
    from mmunlearn.models.loader import load_model

    _, bundle = default_world
    vanilla = tmp_path / "vanilla"
    _install_shipped(vanilla)
    assert (vanilla / "model.safetensors").is_file() and (vanilla / PROVENANCE).is_file()
    assert not vanilla.with_name("vanilla.tmp").exists()
    cfg = EvalConfig(splits=("forget", "retain"), max_records_per_split=40, progress=False)
    summary, _ = evaluate(load_model(vanilla), bundle, cfg)
    for split in ("forget", "retain"):
        acc = summary["metrics"][split]["image+text"]["cls_acc"]
        assert acc >= 0.75, (split, acc)
