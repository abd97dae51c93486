"""Speed of the identity-ranking attack (`mmunlearn attack rank`) on this machine.

    python benchmarks/rank_speed.py --data runs/world [--model runs/vanilla] [--forget-split forget_10]

Times what issue 17 sizes: the forget people's unseen photos (the `test` split: 3 per person) against
every name the data knows (default world: 10 people × 3 photos, 130 trained + 20 holdout names), with the
prompt's keys and values reused over the candidates (mode `cache`, the default). Then the same scoring
through `answer_logprobs` (mode `full`: the prompt recomputed for every candidate) on a few photos, for
the speed-up and the largest difference between the two. Target: ≤ 60 s on 2 CPU cores.

`--model tiny-llava` (the default) builds an untrained tiny LLaVA with the world's tokenizer: the same
architecture and token counts as a fine-tune of it, so the same time; its ranks mean nothing.
Without `--data` a default world (100 + 30 + 20 people, seed 0) is built in a temporary folder first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mmunlearn.data.store import load_data, save_world  # noqa: E402
from mmunlearn.data.world import WorldConfig, build_world  # noqa: E402
from mmunlearn.eval.attacks.rank import (RankConfig, candidate_names, photo_sets, question_and_template,  # noqa: E402
                                         run_rank, score_photos)
from mmunlearn.models.loader import build_tiny, load_model  # noqa: E402
from mmunlearn.train.finetune import world_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="World folder (default: build the default world).")
    ap.add_argument("--model", default="tiny-llava", help="HF folder, or a tiny builder (untrained: timing only).")
    ap.add_argument("--forget-split", default="forget_10")
    ap.add_argument("--batch-size", type=int, default=RankConfig.batch_size)
    ap.add_argument("--full-photos", type=int, default=2, help="Photos scored the slow way for comparison (0: skip).")
    args = ap.parse_args()
    data = args.data
    if data is None:
        data = os.path.join(tempfile.mkdtemp(), "world")
        t = time.perf_counter()
        save_world(build_world(WorldConfig()), data)
        print(f"built the default world in {time.perf_counter() - t:.0f}s → {data}")
    bundle = load_data(data, args.forget_split)
    if os.path.isdir(args.model):
        loaded = load_model(args.model)
    else:
        loaded = build_tiny(args.model, world_corpus(bundle))
        print(f"{args.model}: untrained (same architecture and token counts as a fine-tune: timing only)")

    # The timed run: forget people only, every known name.
    cfg = RankConfig(retain_people=0, holdout=False, batch_size=args.batch_size)
    t = time.perf_counter()
    summary, _ = run_rank(loaded, bundle, cfg)
    wall = time.perf_counter() - t
    forget = summary["groups"]["forget"]
    pairs = summary["timing"]["pairs"]
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"rank attack, cache mode: {forget['n']} photos of {forget['people']} forget people × "
          f"{summary['n_candidates']} names ({summary['candidates_by_population']}) = {pairs:,} pairs in "
          f"{wall:.1f}s ({pairs / wall:,.0f} pairs/s; scoring {summary['timing']['scoring_s']:.1f}s)")
    print(f"forget top-1 {forget['top1']:.2f}, top-5 {forget['top5']:.2f}, median rank {forget['median_rank']:g}")

    if args.full_photos > 0:
        question, template = question_and_template(bundle, cfg)
        answers = [template.format(name=c["name"]) for c in candidate_names(bundle)]
        images = [p.image for p in photo_sets(bundle, cfg)["forget"][: args.full_photos]]
        t = time.perf_counter()
        fast = score_photos(loaded, images, question, answers, cfg)
        t_fast = time.perf_counter() - t
        t = time.perf_counter()
        slow = score_photos(loaded, images, question, answers, RankConfig(mode="full", batch_size=64))
        t_slow = time.perf_counter() - t
        diff = float((fast - slow).abs().max())
        print(f"{len(images)} photos × {len(answers)} names: cache {t_fast:.2f}s, full (answer_logprobs) "
              f"{t_slow:.2f}s (×{t_slow / t_fast:.1f}); largest difference {diff:.2e} nats")


if __name__ == "__main__":
    main()
