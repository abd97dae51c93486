"""Fine-tune the tests' fixture and ship it: `python tests/build_fixture.py` (about 8 minutes on one core).

The fixture is a tiny LLaVA fine-tuned with helpers.SMALL_FINETUNE on the world of helpers.SMALL_WORLD. The
tests use the shipped folder (tests/assets/tuned-small/) while its provenance.json names the world fingerprint
and the recipe the tests would fine-tune with; otherwise they fine-tune a fresh one (and
tests/test_fixture_cache.py fails, saying to run this). Rerun it when either changes, or when a change to
the fine-tune's code changes what it learns: MMUNLEARN_TEST_REFIT=1 runs the suite on a fresh fine-tune
instead of the shipped one.

It trains at one torch thread, the count CI's test workers run at, and writes the folder atomically.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

THREADS = 1


def main() -> None:
    import torch
    import transformers

    from helpers import PROVENANCE, SHIPPED_FIXTURE, SMALL_FINETUNE, SMALL_WORLD, fixture_recipe
    from mmunlearn.data.store import load_data, replace_folder, save_world
    from mmunlearn.data.world import WorldConfig, build_world
    from mmunlearn.train.finetune import FinetuneConfig, finetune

    torch.set_num_threads(THREADS)
    SHIPPED_FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        save_world(build_world(WorldConfig(**SMALL_WORLD)), world)
        manifest = json.loads((world / "world.json").read_text())
        staging = SHIPPED_FIXTURE.with_name(SHIPPED_FIXTURE.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        start = time.time()
        finetune(load_data(world, "forget_15"), FinetuneConfig(**SMALL_FINETUNE), staging)
        provenance = {
            "made_by": "python tests/build_fixture.py",
            "world_fingerprint": manifest["fingerprint"],
            "world_config": manifest["config"],
            "recipe": fixture_recipe(SMALL_FINETUNE),
            "threads": THREADS,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "machine": platform.machine(),
            "wall_time_s": round(time.time() - start, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    replace_folder(staging, SHIPPED_FIXTURE)
    print(f"shipped {SHIPPED_FIXTURE} ({provenance['wall_time_s']} s at {THREADS} thread)")


if __name__ == "__main__":
    main()
