"""The fine-tuned test fixture's cache (MMUNLEARN_TEST_CACHE) is keyed by what made it: a finished run at the
key is reused without fine-tuning, and any change to what made it fine-tunes anew."""

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
