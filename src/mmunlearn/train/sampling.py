"""Deterministic, resumable batch drawing over lists of records, identical on every process.

Data parallelism needs two things of a sampler: every process must agree on what the *global* batch
is (so no record is drawn twice or skipped), and a run on N processes must see the same records as a
run on one process with an N-times larger batch. So the shuffle is one shared stream (its seed never
involves the rank), every draw is a global batch, and each process keeps its own strided share of it
(`shard`). The strided share keeps length-grouped batches balanced across processes.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Process `rank`'s share of a global batch: items rank, rank + world, ... (disjoint, covering)."""
    return list(items[rank::world])


class RecordSampler:
    """Shuffled passes over `items`, a global batch (`batch_size × world`) at a time.

    Every process runs the same stream (seeded by `seed` alone) and draws the same global batch;
    `next()` returns the whole global batch, `next_local()` this process's share. An epoch boundary
    reshuffles.

    `length` + `group`: length-grouped batches. `group` global batches' worth of the shuffled stream
    are sorted by `length(item)`, cut into batches, and those batches are served in random order, so a
    batch pads to the length of similar items instead of the longest of a random 16. Prompts here
    run from ~20 to ~75 tokens: with group 4 a fine-tune batch holds 29 % fewer positions (padding
    39 % → 15 %). Every item is still seen once per pass.
    """

    def __init__(self, items: Sequence[T], batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 length: Callable[[T], int] | None = None, group: int = 1):
        if not items:
            raise ValueError("cannot sample batches from an empty set of records")
        if group < 1:
            raise ValueError(f"group must be at least 1 (got {group})")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world} processes")
        self.items = list(items)
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.global_batch = batch_size * world
        # The stream's seed string is the one single-process runs have always used ("{seed}-0"), so
        # results measured before data parallelism reproduce exactly.
        self.rng = random.Random(f"{seed}-0")
        self.order: list[int] = []
        self.pos = 0
        self.group = group if length is not None else 1
        self._lengths = [length(x) for x in self.items] if length is not None and group > 1 else None
        self.queue: list[list[int]] = []

    def _refill(self) -> None:
        order = list(range(len(self.items)))
        self.rng.shuffle(order)
        self.order = order
        self.pos = 0

    def _take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.pos >= len(self.order):
                self._refill()
                if self.world > 1 and out:
                    self._defer(set(out), n - len(out))
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def _defer(self, taken: set[int], room: int) -> None:
        """A global batch that runs into a new pass must not hold a record twice (two processes would
        train on it in the same step): the new pass's records already in the batch move behind the
        first `room` positions. Every record is still seen once per pass. (One process keeps the
        plain stream, so earlier single-process results reproduce.)"""
        head = [i for i in self.order[: room + len(taken)] if i not in taken][:room]
        rest = [i for i in self.order if i not in set(head)]
        self.order = head + rest

    def next_indices(self) -> list[int]:
        """Indices of the next global batch (the same on every process)."""
        if self._lengths is None:
            return self._take(self.global_batch)
        if not self.queue:
            pool = sorted(self._take(self.global_batch * self.group), key=lambda i: self._lengths[i])
            batches = [pool[k : k + self.global_batch] for k in range(0, len(pool), self.global_batch)]
            self.rng.shuffle(batches)
            self.queue = batches
        return self.queue.pop()

    def next(self) -> list[T]:
        """The next global batch of records (collate it with `shard=(rank, world)`)."""
        return [self.items[i] for i in self.next_indices()]

    def next_local(self) -> list[T]:
        """This process's share of the next global batch."""
        return shard(self.next(), self.rank, self.world)

    def state(self) -> dict:
        """A snapshot (copies: the live lists keep changing as batches are drawn)."""
        return {"rng": self.rng.getstate(), "order": list(self.order), "pos": self.pos,
                "queue": [list(b) for b in self.queue]}

    def load_state(self, state: dict) -> None:
        rng_state = state["rng"]
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.order, self.pos = list(state["order"]), state["pos"]
        self.queue = [list(b) for b in state.get("queue", [])]
