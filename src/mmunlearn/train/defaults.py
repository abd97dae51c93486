"""Fine-tune schedule defaults, in a module that imports nothing heavy so the CLI can show them
without importing torch (FinetuneConfig and every command read them from here).

Measured on the default world (README, memorisation): stage 0 of 900 caption steps, then 400 steps
on the "real" people and 5,000 on the fictitious ones fit the 10-minute budget on 2 CPU cores.
"""

VISION_WARMUP_STEPS = 900
STAGE1_STEPS = 400
STAGE2_STEPS = 5000
BATCH_SIZE = 16
LR = 2e-3
