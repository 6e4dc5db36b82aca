"""Batches assembled ahead of the compute, so that reading the caches overlaps with it.

Every stage that computes (features, train, evaluate) reads its inputs through `prefetched`: with
`loader_workers` > 0 the batches are built by that many threads, `prefetch` batches ahead per
thread, while the current batch computes; on a GPU they are put in pinned memory, so that the copy
to the device does not block the host (it runs on the current stream, in order with the compute). They
travel in their stored dtype (uint8 frames, fp16 tokens: a quarter or half of float32's bytes) and
devices.on_device converts them where they are computed. Threads, not processes: assembling a batch
is copying from memory maps, which numpy does without holding the GIL, and a batch handed over by a
process would be copied once more through shared memory (benchmarks/data_loader.py measured torch's
DataLoader processes several times slower than one thread, docs/benchmarks.md). The batches, and so the results, do not depend on the number of
threads: each is a pure function of its key, and they are yielded in the keys' order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


def _pinned(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, tuple | list):
        return type(batch)(_pinned(t) for t in batch)
    return batch


def prefetched(
    fetch: Callable[[Any], Any], keys: Sequence[Any], workers: int, device: torch.device, prefetch: int = 2
) -> Iterator[Any]:
    """fetch(key) for every key, in order; with `workers` > 0, computed ahead by that many threads."""
    if workers == 0:
        yield from map(fetch, keys)
        return
    pin = device.type == "cuda"

    def load(key: Any) -> Any:
        batch = fetch(key)
        return _pinned(batch) if pin else batch

    pending: deque = deque()
    ahead = iter(keys)
    with ThreadPoolExecutor(workers, thread_name_prefix="mascot-loader") as pool:
        try:
            for key in ahead:
                pending.append(pool.submit(load, key))
                if len(pending) >= workers * prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                for key in ahead:
                    pending.append(pool.submit(load, key))
                    break
                yield batch
        finally:  # the consumer stopped early (an error, a break): drop what was read ahead
            for future in pending:
                future.cancel()
