"""Channel descriptors: which channel space each index of a tensor axis belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Seg:
    """A run of an axis that carries the channels of one space.

    Index ``i`` of the run holds channel ``i // inner`` of ``space``; ``space=None``
    marks channels that cannot be pruned (they come from a model input or a barrier).
    """

    space: int | None
    size: int
    inner: int = 1

    @property
    def length(self) -> int:
        return self.size * self.inner


AxisDesc = tuple  # tuple[Seg, ...]


def desc_length(desc: AxisDesc) -> int:
    return sum(s.length for s in desc)


def desc_spaces(desc: AxisDesc | None) -> list[int]:
    return [] if desc is None else [s.space for s in desc if s.space is not None]


def axis_index(desc: AxisDesc | None, kept_of) -> np.ndarray | None:
    """Indices of an axis that survive pruning, or None if the axis keeps everything.

    ``kept_of(space)`` returns the sorted kept channel indices of a space, or None when
    the space keeps all its channels.
    """
    if desc is None:
        return None
    parts, offset, changed = [], 0, False
    for seg in desc:
        kept = kept_of(seg.space) if seg.space is not None else None
        if kept is None:
            kept = np.arange(seg.size)
        else:
            changed = changed or len(kept) != seg.size
        idx = (np.asarray(kept)[:, None] * seg.inner + np.arange(seg.inner)[None, :]).ravel()
        parts.append(idx + offset)
        offset += seg.length
    if not changed:
        return None
    return np.concatenate(parts).astype(np.int64)


def take_channels(arr: np.ndarray, idx, axis: int) -> np.ndarray:
    """``np.take(arr, idx, axis)`` where an index past the axis's end selects zeros: a kept
    index list may append channels (channel padding, see
    :class:`~tvm_hcprune.backend.cpu.pad_channels.PadChannels`)."""
    idx = np.asarray(idx, dtype=np.int64)
    n = arr.shape[axis]
    if idx.size and int(idx.max()) >= n:
        pad = [(0, 0)] * arr.ndim
        pad[axis] = (0, 1)
        arr = np.pad(arr, pad)
        idx = np.minimum(idx, n)
    return np.take(arr, idx, axis=axis)
