"""Metrics that are more than a counter: the garbage-collector pause histogram."""

from __future__ import annotations

import gc

from audiosocket import metrics


def _count(generation: str) -> float:
    for family in metrics.GC_PAUSES.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == generation:
                return sample.value
    return 0.0


def test_watch_gc_times_each_collection_by_generation() -> None:
    callback = metrics.watch_gc()
    gc.disable()  # only the collections below, none triggered by allocations in between
    try:
        before_full, before_young = _count("2"), _count("0")
        gc.collect()
        gc.collect(0)
        assert _count("2") == before_full + 1
        assert _count("0") == before_young + 1
        gc.callbacks.remove(callback)
        gc.collect()
        assert _count("2") == before_full + 1  # removed: no longer observed
    finally:
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)
        gc.enable()
