"""The collector's tuning at start-up (``runner.tune_gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from audiosocket.config import Config, ConfigError
from audiosocket.root.runner import tune_gc


@pytest.fixture()
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_the_young_threshold_comes_from_the_config(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc(Config(gc_young_threshold=5000)) == (5000, 10, 10)
    assert gc.get_threshold() == (5000, 10, 10)


def test_zero_keeps_pythons_default(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc(Config(gc_young_threshold=0)) == (700, 10, 10)


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match="gc_young_threshold"):
        Config(gc_young_threshold=-1).validate()
