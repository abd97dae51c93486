import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import SMALL_FINETUNE, SMALL_WORLD  # noqa: E402

# The suite runs on two pytest-xdist workers (pyproject's addopts), each at one torch thread: on 2 cores that
# is faster than one process at two threads (tiny models keep a second thread half idle).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# Torch's thread count changes the order of floating-point reductions, so a fine-tune on 1 thread and on 2
# lands on different weights (issue #33), and so does every unlearning run on the (shipped) fixture. Every test
# process runs at one pinned count (a fixture fine-tuned here keys its cache by it): 1 on the workers, 2 in a
# single process (`-n 0`); MMUNLEARN_TEST_THREADS=N sets it. Verdicts must hold on both.
TEST_THREADS = int(os.environ.get("MMUNLEARN_TEST_THREADS") or (1 if WORKERS > 1 else 2))
# xdist hands out whole files (`--dist loadfile`; `loadgroup` no longer groups on pytest 9.2, whose node ids
# it cannot rewrite: pytest-xdist#1386) in the order of this list, then the rest (`--no-loadscope-reorder`):
# the longest files first, so that no long file is left for the end while the other worker idles, and the
# many short ones fill the tail (measured per file; the quick demo, the DeepSpeed and torchrun launches and
# the seed methods' runs are the long ones).
FILE_ORDER = ("test_seed_methods", "test_journey", "test_baselines", "test_deepspeed", "test_bench",
              "test_distributed", "test_tune", "test_attacks", "test_scale_bench", "test_rank_attack")


def pytest_report_header(config):
    return f"mmunlearn tests: torch threads pinned to {TEST_THREADS} (MMUNLEARN_TEST_THREADS)"


def pytest_configure(config):
    import torch

    torch.set_num_threads(TEST_THREADS)


def pytest_collection_modifyitems(config, items):
    """Files in the order FILE_ORDER describes; a file's tests keep theirs (the sort is stable)."""
    first = {stem: i for i, stem in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: first.get(item.path.stem, len(first)))


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


FIXTURE_NOTE = "tuned_small.how"  # which way the fixture was made, for the summary line


def pytest_terminal_summary(terminalreporter, config):
    """Say which fixture the run used: the shipped one, or a fine-tune and why."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None or hasattr(config, "workerinput"):
        return
    note = factory.getbasetemp() / FIXTURE_NOTE
    if note.is_file():
        terminalreporter.write_line(note.read_text().strip())


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
def tuned_small(small_world, small_bundle, tmp_path_factory):
    """A tiny LLaVA fine-tuned on the small world: (bundle, run folder, train_log).

    The shipped one (tests/assets/tuned-small/, made by tests/build_fixture.py) while it was made from this
    world and recipe, copied into the run's temp folder; else a fine-tune, once per pytest run, in the folder
    every xdist worker shares, under a lock (the first worker fine-tunes, the others wait and reuse it).
    MMUNLEARN_TEST_REFIT=1 fine-tunes even so (the current fine-tune's model under every test);
    MMUNLEARN_TEST_CACHE=DIR keeps such a fine-tune between pytest runs, keyed by what made it;
    MMUNLEARN_TEST_FIXTURE=DIR uses one finished fine-tune as it is, whatever the sources (editing tests only).
    tests/test_fixture_cache.py proves each path.
    """
    import json

    import torch
    import transformers

    import mmunlearn
    from helpers import fixture_folder

    bundle = small_bundle
    pinned = os.environ.get("MMUNLEARN_TEST_FIXTURE")
    if pinned:  # a fine-tuned folder used as it is, unkeyed: quick iteration on tests only, never in CI
        out = Path(pinned)
        if not (out / "train_log.json").is_file():
            pytest.exit(f"MMUNLEARN_TEST_FIXTURE={pinned} holds no finished fine-tune (train_log.json)", 2)
        return bundle, out, json.loads((out / "train_log.json").read_text())
    from filelock import FileLock

    shared = shared_dir(tmp_path_factory)
    with FileLock(str(shared / "tuned_small.lock")):
        out, log, how = fixture_folder(bundle, small_world, fixture_settings(), shared / "tuned",
                                       refit=os.environ.get("MMUNLEARN_TEST_REFIT") == "1",
                                       cache_dir=os.environ.get("MMUNLEARN_TEST_CACHE"),
                                       package_root=Path(mmunlearn.__file__).parent,
                                       versions=(torch.__version__, transformers.__version__))
        (shared / FIXTURE_NOTE).write_text(f"fine-tuned fixture: {how}, {out}\n")
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
