"""Training-step and generation speed of each tiny family on this machine (prints a Markdown table).

    python benchmarks/step_speed.py [--world DIR] [--steps 20]

Speed figures belong here, not in timed unit tests. Uses a small world it creates if none is given.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mmunlearn.data.collate import TrainCollator, approx_length  # noqa: E402
from mmunlearn.data.store import load_data, save_world  # noqa: E402
from mmunlearn.data.world import WorldConfig, build_world  # noqa: E402
from mmunlearn.eval.engine import generate  # noqa: E402
from mmunlearn.methods.losses import answer_nll  # noqa: E402
from mmunlearn.models.answer_logits import answer_logits  # noqa: E402
from mmunlearn.models.loader import build_tiny  # noqa: E402
from mmunlearn.train.finetune import world_corpus  # noqa: E402
from mmunlearn.train.sampling import RecordSampler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    world = args.world
    if world is None:
        world = os.path.join(tempfile.mkdtemp(), "w")
        save_world(build_world(WorldConfig(profiles=12, real=4, holdout=3)), world)
    bundle = load_data(world, "forget_10")
    records = bundle.splits["finetune"]
    eval_recs = [r for r in bundle.eval("retain") if r.task == "generation"][:64]
    rows = []
    for family in ("llava", "qwen2-vl", "idefics3"):
        loaded = build_tiny(f"tiny-{family}", world_corpus(bundle))
        model = loaded.model
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True)
        step_ms = {}
        # "full": the model's own loss over every position, batches of 16 drawn at random (before);
        # "answer-only": vocabulary projection at answer positions only, length-grouped batches (now).
        for mode in ("full", "answer-only"):
            sampler = RecordSampler(records, args.batch_size, seed=0,
                                    **({"length": approx_length, "group": 4} if mode == "answer-only" else {}))
            times = []
            for step in range(args.steps + 3):
                batch = collate(sampler.next())
                t = time.perf_counter()
                loss = model(**batch).loss if mode == "full" else answer_nll(*answer_logits(model, batch))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step >= 3:  # skip warm-up steps
                    times.append(time.perf_counter() - t)
            step_ms[mode] = 1000 * sum(times) / len(times)
        t = time.perf_counter()
        generate(loaded, eval_recs, max_new_tokens=24, batch_size=64, progress=False)
        gen_s = time.perf_counter() - t
        rows.append((family, params, step_ms, len(eval_recs) / gen_s))
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch_size}, {args.steps} steps per mode")
    print("| family | params | train step, full logits + random batches (ms) | train step, answer-only logits + "
          "length-grouped batches (ms) | generation (samples/s, 24 new tokens) |")
    print("|---|---:|---:|---:|---:|")
    for family, params, ms, gen_rate in rows:
        print(f"| {family} | {params:,} | {ms['full']:.0f} | {ms['answer-only']:.0f} | {gen_rate:.1f} |")


if __name__ == "__main__":
    main()
