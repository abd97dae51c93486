"""The fine-tuned test fixture: the shipped one (tests/assets/tuned-small/) is used while it was made from the
small world and the recipe, and a fine-tune replaces it otherwise; a fine-tune's cache (MMUNLEARN_TEST_CACHE) is
keyed by what made it: a finished run at the key is reused without fine-tuning, and any change to what made it
fine-tunes anew."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import fine_tuned_fixture, fixture_cache_key


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_key_follows_settings_sources_and_versions(tmp_path):
    files = {"a.py": "x = 1\n", "sub/b.py": "y = 2\n", "notes.txt": "not code\n"}
    one = _package(tmp_path / "one", files)
    two = _package(tmp_path / "two", files)  # the same bytes elsewhere: the same key
    settings = {"steps": 10, "lr": 0.002}
    key = fixture_cache_key(settings, one, ("2.13", "5.24"))
    assert len(key) == 16 and int(key, 16) >= 0
    assert fixture_cache_key({"lr": 0.002, "steps": 10}, two, ("2.13", "5.24")) == key  # key order is no change
    assert fixture_cache_key({"steps": 11, "lr": 0.002}, one, ("2.13", "5.24")) != key
    assert fixture_cache_key(settings, one, ("2.13", "5.25")) != key
    (one / "notes.txt").write_text("edited\n")  # not a source file
    assert fixture_cache_key(settings, one, ("2.13", "5.24")) == key
    (one / "sub" / "b.py").write_text("y = 3\n")
    assert fixture_cache_key(settings, one, ("2.13", "5.24")) != key
    (one / "sub" / "b.py").write_text("y = 2\n")
    (one / "c.py").write_text("")  # a new, empty module changes it too
    assert fixture_cache_key(settings, one, ("2.13", "5.24")) != key
    (one / "c.py").unlink()
    (one / "sub" / "b.py").rename(one / "b2.py")  # same bytes, other path
    assert fixture_cache_key(settings, one, ("2.13", "5.24")) != key


def test_the_settings_hold_the_pinned_thread_count():
    """Runs at 1 and 2 threads train different weights (issue #33): the count is in the key, and it is the
    count this process really runs at."""
    import torch

    from conftest import SMALL_FINETUNE, SMALL_WORLD, TEST_THREADS, fixture_settings

    assert fixture_settings() == {"finetune": SMALL_FINETUNE, "world": SMALL_WORLD, "threads": TEST_THREADS}
    assert torch.get_num_threads() == TEST_THREADS


class _Finetunes:
    """Stands in for mmunlearn.train.finetune.finetune: counts calls and writes a finished run's log."""

    def __init__(self, allowed: bool):
        self.allowed, self.calls = allowed, []

    def __call__(self, bundle, cfg, out) -> None:
        if not self.allowed:
            raise AssertionError(f"fine-tuned into {out} although a finished run was cached")
        self.calls.append((bundle, cfg, Path(out)))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "train_log.json").write_text(json.dumps({"built": len(self.calls)}))


def test_a_finished_run_at_the_key_is_reused_and_any_change_fine_tunes_anew(tmp_path, monkeypatch):
    import torch
    import transformers

    import mmunlearn
    from conftest import fixture_settings

    root, versions = Path(mmunlearn.__file__).parent, (torch.__version__, transformers.__version__)
    settings, cache, bundle = fixture_settings(), tmp_path / "cache", object()  # a bundle only passed through
    planted = cache / f"tuned_small-{fixture_cache_key(settings, root, versions)}"
    planted.mkdir(parents=True)
    (planted / "train_log.json").write_text(json.dumps({"planted": True}))

    # what conftest's tuned_small does with MMUNLEARN_TEST_CACHE set: the planted run, no fine-tune
    monkeypatch.setattr("mmunlearn.train.finetune.finetune", _Finetunes(allowed=False))
    out, log = fine_tuned_fixture(bundle, str(cache), settings, root, versions, tmp_path / "tmp")
    assert out == planted and log == {"planted": True}

    # another thread count, another recipe: each fine-tunes (with that recipe) beside the planted run
    builds = _Finetunes(allowed=True)
    monkeypatch.setattr("mmunlearn.train.finetune.finetune", builds)
    other_threads = {**settings, "threads": settings["threads"] + 1}
    out, log = fine_tuned_fixture(bundle, str(cache), other_threads, root, versions, tmp_path / "tmp")
    assert len(builds.calls) == 1 and log == {"built": 1}
    assert out.parent == cache and out != planted and builds.calls[0][0] is bundle and builds.calls[0][2] == out
    steps = settings["finetune"]["stage2_steps"] + 1
    longer = {**settings, "finetune": {**settings["finetune"], "stage2_steps": steps}}
    out2, log = fine_tuned_fixture(bundle, str(cache), longer, root, versions, tmp_path / "tmp")
    assert len(builds.calls) == 2 and log == {"built": 2} and out2 not in (planted, out)
    assert builds.calls[1][1].stage2_steps == steps
    # another library version too; and what was just built is reused in its turn
    fine_tuned_fixture(bundle, str(cache), settings, root, (*versions[:1], "0.0"), tmp_path / "tmp")
    assert len(builds.calls) == 3
    again = fine_tuned_fixture(bundle, str(cache), other_threads, root, versions, tmp_path / "tmp")
    assert again == (out, {"built": 1}) and len(builds.calls) == 3
    assert json.loads((planted / "train_log.json").read_text()) == {"planted": True}  # never overwritten


def test_an_unfinished_run_at_the_key_and_no_cache_both_fine_tune(tmp_path, monkeypatch):
    """Only train_log.json (written last) marks a finished run; CI sets no cache and always builds in tmp."""
    root, settings = _package(tmp_path / "pkg", {"a.py": "x = 1\n"}), {"finetune": {"stage2_steps": 3}, "threads": 2}
    builds = _Finetunes(allowed=True)
    monkeypatch.setattr("mmunlearn.train.finetune.finetune", builds)
    half = tmp_path / "cache" / f"tuned_small-{fixture_cache_key(settings, root, ())}"
    (half / "checkpoint").mkdir(parents=True)  # an interrupted fine-tune: weights, no log
    out, log = fine_tuned_fixture("b", str(tmp_path / "cache"), settings, root, (), tmp_path / "tmp")
    assert out == half and log == {"built": 1} and len(builds.calls) == 1
    out, log = fine_tuned_fixture("b", None, settings, root, (), tmp_path / "tmp")
    assert out == tmp_path / "tmp" / "vanilla" and log == {"built": 2} and len(builds.calls) == 2


# --- the shipped fixture (tests/assets/tuned-small/, made by tests/build_fixture.py) -------------------------

def test_the_shipped_fixture_was_fine_tuned_on_the_small_world_with_its_recipe(small_world):
    """Else every run fine-tunes its own (7 minutes of CI's 20): ship a new one."""
    from helpers import PROVENANCE, SHIPPED_FIXTURE, SMALL_FINETUNE, shipped_fixture_matches

    ok, why = shipped_fixture_matches(SHIPPED_FIXTURE, small_world, SMALL_FINETUNE)
    assert ok, f"{why}: run `python tests/build_fixture.py` and commit tests/assets/tuned-small"
    provenance = json.loads((SHIPPED_FIXTURE / PROVENANCE).read_text())
    log = json.loads((SHIPPED_FIXTURE / "train_log.json").read_text())
    made = {k: v for k, v in log["config"].items() if k not in ("checkpoint_every", "log_with")}
    assert made == provenance["recipe"]  # the weights are the run the provenance describes
    assert log["steps_run"] == SMALL_FINETUNE["stage1_steps"] + SMALL_FINETUNE["stage2_steps"] == 1800
    assert provenance["world_config"] == json.loads((small_world / "world.json").read_text())["config"]
    assert provenance["threads"] == log["threads"] == 1


def test_this_run_uses_the_shipped_fixture_unless_told_otherwise(tuned_small):
    """The session's fixture is a byte copy of the shipped one, outside tests/ (no fine-tune ran)."""
    import os

    from helpers import SHIPPED_FIXTURE

    _, out, log = tuned_small
    if os.environ.get("MMUNLEARN_TEST_REFIT") == "1" or os.environ.get("MMUNLEARN_TEST_FIXTURE"):
        assert out.resolve() != SHIPPED_FIXTURE.resolve()
        return
    assert out.name == "shipped" and SHIPPED_FIXTURE.resolve() not in out.resolve().parents
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_log.json"):
        assert (out / name).read_bytes() == (SHIPPED_FIXTURE / name).read_bytes(), name
    assert log == json.loads((SHIPPED_FIXTURE / "train_log.json").read_text())


def _ship(folder: Path, fingerprint: str, recipe: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps({"world_fingerprint": fingerprint, "recipe": recipe}))
    (folder / "train_log.json").write_text(json.dumps({"shipped": True}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_matching_shipped_fixture_is_copied_and_any_mismatch_fine_tunes(small_world, tmp_path, monkeypatch):
    from conftest import SMALL_FINETUNE, fixture_settings
    from helpers import fixture_folder

    fingerprint = json.loads((small_world / "world.json").read_text())["fingerprint"]
    # the recipe spelled out: SMALL_FINETUNE over FinetuneConfig's defaults, less how the run is kept or watched
    recipe = {"model": "tiny-llava", "stage1_steps": 200, "stage2_steps": 1600, "batch_size": 16, "lr": 0.002,
              "warmup_steps": 30, "weight_decay": 0.0, "replay": 0.15, "length_group": 4, "seed": 0,
              "tiny": {"vision_hidden": 64, "vision_layers": 2, "text_hidden": 128, "text_layers": 4,
                       "text_mlp_ratio": 4, "heads": 4, "image_size": 32, "patch_size": 8, "max_positions": 512},
              "exclude_ids": [], "vision_warmup_steps": 900, "caption_replay": 0.1}
    shipped = _ship(tmp_path / "shipped-here", fingerprint, recipe)
    settings, bundle = fixture_settings(), object()

    monkeypatch.setattr("mmunlearn.train.finetune.finetune", _Finetunes(allowed=False))
    out, log, how = fixture_folder(bundle, small_world, settings, tmp_path / "run", shipped=shipped)
    assert (how, log) == ("shipped", {"shipped": True}) and out == tmp_path / "run" / "shipped"
    assert (out / "model.safetensors").read_bytes() == b"weights" and not (tmp_path / "run" / "shipped.tmp").exists()
    assert sorted(p.name for p in shipped.iterdir()) == ["model.safetensors", "provenance.json", "train_log.json"]

    builds = _Finetunes(allowed=True)
    monkeypatch.setattr("mmunlearn.train.finetune.finetune", builds)
    out, log, how = fixture_folder(bundle, small_world, settings, tmp_path / "refit", shipped=shipped, refit=True)
    assert how == "fine-tuned (MMUNLEARN_TEST_REFIT=1)" and log == {"built": 1}
    assert out == tmp_path / "refit" / "vanilla" and builds.calls[0][0] is bundle
    longer = {**settings, "finetune": {**SMALL_FINETUNE, "stage2_steps": 1601}}
    _, log, how = fixture_folder(bundle, small_world, longer, tmp_path / "longer", shipped=shipped)
    assert how == "fine-tuned (the fixture's recipe differs from the one the shipped fixture was fine-tuned with)"
    assert log == {"built": 2} and builds.calls[1][1].stage2_steps == 1601
    other_world = _ship(tmp_path / "other-world", "0" * len(fingerprint), recipe)
    _, log, how = fixture_folder(bundle, small_world, settings, tmp_path / "other", shipped=other_world)
    assert how == "fine-tuned (the small world differs from the one the shipped fixture was fine-tuned on)"
    _, log, how = fixture_folder(bundle, small_world, settings, tmp_path / "none", shipped=tmp_path / "missing")
    assert how == f"fine-tuned (no shipped fixture at {tmp_path / 'missing'})" and len(builds.calls) == 4
