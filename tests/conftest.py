import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


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


@pytest.fixture(scope="session")
def tuned_small(small_world, tmp_path_factory):
    """A tiny LLaVA fine-tuned on the small world: (bundle, run folder, train_log).

    Set MMUNLEARN_TEST_CACHE=DIR to keep it between pytest runs while developing (CI builds it fresh).
    """
    import json
    from pathlib import Path

    from mmunlearn.data.store import load_data
    from mmunlearn.train.finetune import FinetuneConfig, finetune

    import torch
    import transformers

    import mmunlearn
    from helpers import fixture_cache_key

    bundle = load_data(small_world, "forget_15")
    cache = os.environ.get("MMUNLEARN_TEST_CACHE")
    if cache:  # keyed by what made it: a changed recipe, source file or library builds a new one
        key = fixture_cache_key({"finetune": SMALL_FINETUNE, "world": SMALL_WORLD},
                                Path(mmunlearn.__file__).parent, (torch.__version__, transformers.__version__))
        out = Path(cache) / f"tuned_small-{key}"
    else:
        out = tmp_path_factory.mktemp("tuned") / "vanilla"
    if not (out / "train_log.json").is_file():
        finetune(bundle, FinetuneConfig(**SMALL_FINETUNE), out)
    return bundle, out, json.loads((out / "train_log.json").read_text())


@pytest.fixture(scope="session")
def untrained_llava(small_world, tmp_path_factory):
    """A freshly built (untrained) tiny LLaVA saved as an HF folder: engine mechanics need no memory."""
    from mmunlearn.data.store import load_data
    from mmunlearn.models.loader import build_tiny
    from mmunlearn.train.finetune import world_corpus

    out = tmp_path_factory.mktemp("untrained") / "llava"
    build_tiny("tiny-llava", world_corpus(load_data(small_world, "forget_15"))).save(out)
    return out
