"""Forget two of the three people in examples/people.jsonl with the Python API (under a minute on a CPU).

A tiny LLaVA learns everyone (200 steps: the schedule scales to the data), then unlearns p1 and p2 with short
GradDiff (retain term ×3); p3 is the retain person whose answers should survive. Nothing is written to disk.
"""
from pathlib import Path

from mmunlearn import evaluate, finetune, load_data, unlearn

data = load_data(Path(__file__).parent / "people.jsonl", forget_ids=["p1", "p2"])  # p3 is kept
model = finetune(data, "tiny-llava", lr=3e-3, vision_warmup_steps=0, warmup_steps=0)  # 200 steps for 3 people
before = evaluate(model, data, splits=("forget", "retain"))
unlearn(model, data, method="graddiff", steps=30, batch_size=4, alpha=3.0)  # in place; alpha: retain weight
after = evaluate(model, data, splits=("forget", "retain"))
for split in ("forget", "retain"):
    for modality, b in before["metrics"][split].items():
        a = after["metrics"][split][modality]
        print(f"{split:6s} {modality:10s} ROUGE-L {b['rougeL_f1']:.3f} -> {a['rougeL_f1']:.3f}   "
              f"p(answer) {b['prob']:.3f} -> {a['prob']:.3f}")
