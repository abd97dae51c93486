"""Put a fitted default-world vanilla model into the package (src/mmunlearn/assets/vanilla-default/), with the
provenance `mmunlearn demo` checks before using it: the world's fingerprint and the fine-tune recipe.

The folder must be a `mmunlearn finetune` run on a world built with `mmunlearn world`'s defaults, made with the
default recipe (what `mmunlearn demo --refit` runs); the script refuses anything else. Only the files a model
folder needs are copied (weights, config, tokenizer, processor, the run's train_log.json, run.json and card).

    mmunlearn world --out runs/world
    mmunlearn finetune --data runs/world --out runs/vanilla            # 13 min on 2 cores
    python benchmarks/ship_vanilla.py --world runs/world --vanilla runs/vanilla
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "processor_config.json", "chat_template.jinja", "special_tokens_map.json", "preprocessor_config.json",
        "train_log.json", "run.json", "README.md")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import transformers

    import mmunlearn
    from mmunlearn.data.store import load_data
    from mmunlearn.demo import PROVENANCE, SHIPPED_VANILLA, make_plan, recipe
    from mmunlearn.train.finetune import learning_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--vanilla", type=Path, required=True)
    args = parser.parse_args()
    plan = make_plan(quick=False)
    manifest = json.loads((args.world / "world.json").read_text())
    wanted = {k: manifest["config"].get(k) for k in plan.world}
    if wanted != plan.world or "fingerprint" not in manifest:
        raise SystemExit(f"error: {args.world} is not the default world with a fingerprint ({wanted}); "
                         "build it with `mmunlearn world --out DIR`")
    log = json.loads((args.vanilla / "train_log.json").read_text())
    made = learning_recipe(log["config"])
    expected = recipe(load_data(args.world, plan.forget_split), plan)
    if made != expected:
        diff = {k: (made.get(k), expected.get(k)) for k in set(made) | set(expected) if made.get(k) != expected.get(k)}
        raise SystemExit(f"error: {args.vanilla} was not made with the demo's recipe: {diff}")
    tmp = SHIPPED_VANILLA.with_name(SHIPPED_VANILLA.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in KEEP:
        if (args.vanilla / name).is_file():
            shutil.copy2(args.vanilla / name, tmp / name)
    provenance = {
        "what": "the vanilla model of `mmunlearn demo`: a tiny LLaVA fine-tuned on the default world",
        "world_fingerprint": manifest["fingerprint"], "world_config": manifest["config"],
        "recipe": expected,
        "made_with": {"mmunlearn": mmunlearn.__version__, "torch": torch.__version__,
                      "transformers": transformers.__version__, "threads": log.get("threads"),
                      "processes": log.get("processes"), "cpu": platform.processor() or platform.machine()},
        "fine_tune_wall_time_s": log.get("wall_time_s"), "shipped": time.strftime("%Y-%m-%d"),
        "command": "mmunlearn world --out runs/world && mmunlearn finetune --data runs/world --out runs/vanilla",
    }
    (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(SHIPPED_VANILLA, ignore_errors=True)
    tmp.rename(SHIPPED_VANILLA)
    size = sum(p.stat().st_size for p in SHIPPED_VANILLA.iterdir()) / 2**20
    print(f"shipped {args.vanilla} → {SHIPPED_VANILLA} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
