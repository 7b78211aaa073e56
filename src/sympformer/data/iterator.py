r"""Batches of context blocks (YuriiFormer App. A.2 protocol).

Training: each epoch draws an offset in [0, T − 1] and cuts the shard into non-overlapping blocks of
T tokens starting there (inputs x = data[s : s+T], targets y = data[s+1 : s+T+1]), visited in a
shuffled order; offset and order come from a generator seeded by (seed, epoch), so the state is two
integers (epoch, cursor) and a restored iterator continues exactly. With several processes each rank
takes its own slice of every global batch.

Validation: a FIXED list of batches (blocks evenly spaced over the whole validation shard), the same
at every evaluation and for every architecture.
"""

from __future__ import annotations

import numpy as np
import torch


def _block(data: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    chunk = np.asarray(data[start : start + length + 1], dtype=np.int64)
    return chunk[:-1], chunk[1:]


class BlockIterator:
    def __init__(
        self, data: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if len(data) < block_size + 2:
            raise ValueError(f"the shard has {len(data)} tokens, fewer than one block of {block_size} + 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._plan_epoch = None

    def _plan(self) -> tuple[int, np.ndarray]:
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            offset = int(rng.integers(0, self.block_size))
            count = (len(self.data) - offset - 1) // self.block_size
            self._plan_cache = (offset, rng.permutation(count))
            self._plan_epoch = self.epoch
        return self._plan_cache

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world_size
        offset, order = self._plan()
        if len(order) < global_batch:
            raise ValueError(f"one epoch holds {len(order)} blocks, fewer than a global batch of {global_batch}")
        if self.cursor + global_batch > len(order):
            self.epoch, self.cursor = self.epoch + 1, 0
            offset, order = self._plan()
        mine = order[self.cursor + self.rank * self.batch_size : self.cursor + (self.rank + 1) * self.batch_size]
        self.cursor += global_batch
        pairs = [_block(self.data, offset + int(b) * self.block_size, self.block_size) for b in mine]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"iterator state is for seed {state['seed']}, this iterator has seed {self.seed}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def validation_batches(
    data: np.ndarray, block_size: int, batch_size: int, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set: up to ``n_batches`` batches of blocks evenly spaced over ``data``."""
    available = (len(data) - 1) // block_size
    if available < 1:
        raise ValueError(f"the validation shard has {len(data)} tokens, fewer than one block of {block_size} + 1")
    wanted = min(available, n_batches * batch_size)
    starts = np.unique(np.linspace(0, available - 1, wanted).round().astype(np.int64)) * block_size
    batches = []
    for i in range(0, len(starts), batch_size):
        pairs = [_block(data, int(s), block_size) for s in starts[i : i + batch_size]]
        batches.append(
            (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))
        )
    return batches
