"""A list of records kept as one byte buffer, so forked loader workers share it instead of copying it.

Python objects carry reference counts that change whenever they are read, and the garbage collector walks
every container: a worker forked from a process holding COCO's parsed JSON (millions of small dicts and
lists) gradually copies all of those pages, once per worker (pytorch#13246). detectron2's
``DatasetFromList(serialize=True)`` keeps the records pickled in one numpy array instead; so does this.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np


class SerializedList:
    """``items`` pickled into one uint8 buffer with their end offsets; ``self[i]`` unpickles item i."""

    def __init__(self, items: Iterable[Any]):
        blobs = [np.frombuffer(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for item in items]
        self.ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self.buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> Any:
        start = int(self.ends[index - 1]) if index > 0 else 0
        return pickle.loads(memoryview(self.buffer[start : int(self.ends[index])]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.ends.nbytes
