import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The suite runs on two pytest-xdist workers (pyproject's addopts), each at one torch thread: on 2 cores that
# is faster than one process at two threads (tiny models keep a second thread half idle).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# Torch's thread count changes the order of floating-point reductions, so a fine-tune on 1 thread and on 2
# lands on different weights (issue #33). Every test process runs at one pinned count (the fixture's cache key
# holds it): 1 on the workers, 2 in a single process (`-n 0`); MMUNLEARN_TEST_THREADS=N sets
# it. Verdicts must hold on both.
TEST_THREADS = int(os.environ.get("MMUNLEARN_TEST_THREADS") or (1 if WORKERS > 1 else 2))
# xdist hands out whole files (`--dist loadfile`; `loadgroup` no longer groups on pytest 9.2, whose node ids
# it cannot rewrite: pytest-xdist#1386) in the order of this list, then the other files that use the fine-tuned
# fixture, then the rest (`--no-loadscope-reorder`). One worker starts on a file that fine-tunes the shared
# fixture while the other runs the longest files that need no fixture (the quick demo, the DeepSpeed and
# torchrun launches) instead of waiting on the fine-tune's lock; the fixture's heaviest users come next, so no
# long file is left for the end, and the many short files fill the tail.
FILE_ORDER = ("test_baselines", "test_journey", "test_deepspeed", "test_distributed", "test_seed_methods",
              "test_attacks", "test_rank_attack", "test_bench")


def pytest_report_header(config):
    return f"mmunlearn tests: torch threads pinned to {TEST_THREADS} (MMUNLEARN_TEST_THREADS)"


def pytest_configure(config):
    import torch

    torch.set_num_threads(TEST_THREADS)


def pytest_collection_modifyitems(config, items):
    """Files in the order FILE_ORDER describes; a file's tests keep theirs (the sort is stable)."""
    first = {stem: i for i, stem in enumerate(FILE_ORDER)}
    fixture_users = {item.path.stem for item in items if "tuned_small" in item.fixturenames}
    items.sort(key=lambda item: first.get(item.path.stem, len(first) + (item.path.stem not in fixture_users)))


def shared_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this pytest run sees (the workers' temp folders' parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKERS > 1 else base


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 6-profile world on disk (plus 4 'real' and 3 holdout people), shared by the session."""
    from mmunlearn.data.store import save_world
    from mmunlearn.data.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("world") / "w"
    # every training phrasing of every question (the world's default, spelled out): with one, how well
    # the 6 people's facts carried over to the evaluation phrasings varied from run to run (retain
    # 0.63–0.94)
    save_world(build_world(WorldConfig(**SMALL_WORLD)), out)
    return out


# The small world's settings (every training phrasing of every question, the world's default, spelled out)
SMALL_WORLD = dict(profiles=6, real=4, holdout=3, seed=0, train_phrasings=3)
# Fine-tune settings for the small world: enough for the 6 people to be memorised (see test_finetune).
SMALL_FINETUNE = dict(stage1_steps=200, stage2_steps=1600, batch_size=16, lr=2e-3, warmup_steps=30, checkpoint_every=0)


def fixture_settings() -> dict:
    """What the fine-tuned fixture depends on besides the sources and library versions: its recipe, its world
    and the thread count it was trained at."""
    return {"finetune": SMALL_FINETUNE, "world": SMALL_WORLD, "threads": TEST_THREADS}


@pytest.fixture(scope="session")
def small_bundle(small_world):
    """The small world loaded with forget_15 (the fine-tuned fixture's data): for tests that need data only."""
    from mmunlearn.data.store import load_data

    return load_data(small_world, "forget_15")


@pytest.fixture(scope="session")
def tuned_small(small_bundle, tmp_path_factory):
    """A tiny LLaVA fine-tuned on the small world: (bundle, run folder, train_log).

    Set MMUNLEARN_TEST_CACHE=DIR to keep it between pytest runs while developing (CI builds it fresh);
    MMUNLEARN_TEST_FIXTURE=DIR uses one finished fine-tune as it is, whatever the sources (editing tests only).
    """
    import json

    import torch
    import transformers

    import mmunlearn
    from helpers import fine_tuned_fixture

    bundle = small_bundle
    pinned = os.environ.get("MMUNLEARN_TEST_FIXTURE")
    if pinned:  # a fine-tuned folder used as it is, unkeyed: quick iteration on tests only, never in CI
        out = Path(pinned)
        if not (out / "train_log.json").is_file():
            pytest.exit(f"MMUNLEARN_TEST_FIXTURE={pinned} holds no finished fine-tune (train_log.json)", 2)
        return bundle, out, json.loads((out / "train_log.json").read_text())
    # MMUNLEARN_TEST_CACHE: keyed by what made it (tests/test_fixture_cache.py proves the reuse and the rebuild).
    # Without it the run is built once per pytest run: in the folder every xdist worker shares, under a lock
    # (the first worker fine-tunes, the others wait and reuse it).
    from filelock import FileLock

    shared = shared_dir(tmp_path_factory)
    with FileLock(str(shared / "tuned_small.lock")):
        out, log = fine_tuned_fixture(bundle, os.environ.get("MMUNLEARN_TEST_CACHE"), fixture_settings(),
                                      Path(mmunlearn.__file__).parent,
                                      (torch.__version__, transformers.__version__), shared / "tuned")
    return bundle, out, log


@pytest.fixture(scope="session")
def vkd_forgotten(tuned_small, tmp_path_factory):
    """The fixture after VKD at its defaults with forget_cap 2.0 (480 steps, ~80 s): one run shared by the VKD
    forgetting test (tests/test_seed_methods.py) and the identity-ranking test that the retain people keep
    their names while the forget person loses theirs (tests/test_rank_attack.py), built once per pytest run
    in the folder every worker shares, under a lock, and loaded from it."""
    from filelock import FileLock

    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, UnlearnResult, read_log, unlearn

    bundle, vanilla, _ = tuned_small
    shared = shared_dir(tmp_path_factory)
    run = shared / "vkd-forgotten"
    with FileLock(str(shared / "vkd_forgotten.lock")):  # the files using it may run on different workers
        if not (run / "unlearn_log.json").is_file():
            unlearn(bundle, UnlearnConfig(method="vkd", method_args={"forget_cap": 2.0}), run,
                    loaded=load_model(vanilla))
    return UnlearnResult(load_model(run), read_log(run))


@pytest.fixture(scope="session")
def untrained_llava(small_world, tmp_path_factory):
    """A freshly built (untrained) tiny LLaVA saved as an HF folder: engine mechanics need no memory."""
    from mmunlearn.data.store import load_data
    from mmunlearn.models.loader import build_tiny
    from mmunlearn.train.finetune import world_corpus

    out = tmp_path_factory.mktemp("untrained") / "llava"
    build_tiny("tiny-llava", world_corpus(load_data(small_world, "forget_15"))).save(out)
    return out
