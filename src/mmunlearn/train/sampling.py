"""Deterministic, resumable batch drawing over lists of records."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


class RecordSampler:
    """Shuffled passes over `items`, `batch_size` at a time; an epoch boundary reshuffles.

    `rank`/`world` give each accelerate process a disjoint stream, so `--num_processes 2` does not
    train twice on the same batch.
    """

    def __init__(self, items: Sequence[T], batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if not items:
            raise ValueError("cannot sample batches from an empty set of records")
        self.items = list(items)
        self.batch_size = batch_size
        self.rng = random.Random(f"{seed}-{rank}")
        self.rank, self.world = rank, world
        self.order: list[int] = []
        self.pos = 0

    def _refill(self) -> None:
        order = list(range(len(self.items)))
        self.rng.shuffle(order)
        self.order = order[self.rank :: self.world] or order
        self.pos = 0

    def next(self) -> list[T]:
        out = []
        while len(out) < self.batch_size:
            if self.pos >= len(self.order):
                self._refill()
            out.append(self.items[self.order[self.pos]])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "order": self.order, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        rng_state = state["rng"]
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.order, self.pos = list(state["order"]), state["pos"]
