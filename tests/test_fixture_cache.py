"""The fine-tuned test fixture's cache (MMUNLEARN_TEST_CACHE) is keyed by what made it."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import fixture_cache_key


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


def test_the_fixture_was_taken_from_the_keyed_cache_or_built_afresh(tuned_small):
    import torch
    import transformers

    import mmunlearn
    from conftest import SMALL_FINETUNE, SMALL_WORLD

    _, folder, _ = tuned_small
    cache = os.environ.get("MMUNLEARN_TEST_CACHE")
    if cache:
        key = fixture_cache_key({"finetune": SMALL_FINETUNE, "world": SMALL_WORLD}, Path(mmunlearn.__file__).parent,
                                (torch.__version__, transformers.__version__))
        assert folder == Path(cache) / f"tuned_small-{key}"
    else:  # CI: never a cache, a folder of this session's own
        assert "pytest-" in str(folder) and folder.name == "vanilla"
