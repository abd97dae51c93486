"""Fine-tune schedule defaults, in a module that imports nothing heavy so the CLI can show them
without importing torch (FinetuneConfig and every command read them from here).

Measured on the default world (README, memorisation): stage 0 of 900 caption steps, then 400 steps
on the "real" people and 5,000 on the fictitious ones. These are caps: a smaller data set gets
SCHEDULE_EPOCHS passes over its records (at least MIN_STAGE2_STEPS steps), so three people are not
trained for 5,000 steps (train/finetune.py, `scaled_schedule`). The default world reaches every cap.
"""

VISION_WARMUP_STEPS = 900
STAGE1_STEPS = 400
STAGE2_STEPS = 5000
BATCH_SIZE = 16
LR = 2e-3
SCHEDULE_EPOCHS = 40  # passes over a small data set's records before the caps above apply
MIN_STAGE2_STEPS = 200  # even a handful of records gets this many steps (memorising takes steps, not data)
# A resumable checkpoint every N optimiser steps, the same on every command that trains; 0 (the default): never.
# Off by default because a full-scope 7B checkpoint (weights + AdamW state) is ~84 GB in all (written in shards,
# 1/N per process); `--checkpoint-every N` makes `--resume` possible. An unlearning run's checkpoints go when it finishes.
CHECKPOINT_EVERY = 0
