"""The publisher: one write for however many collections ended meanwhile, paced by its CPU."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from exporter import publisher as publisher_module
from exporter.publisher import PAUSE_FACTOR, EverySecond, Publisher


def test_collections_ending_during_a_write_are_published_together_by_the_next() -> None:
    writing, release = threading.Event(), threading.Event()
    writes: list[frozenset[str]] = []
    publisher: Publisher

    def publish() -> None:
        writes.append(publisher.published)
        if len(writes) == 1:
            writing.set()
            assert release.wait(10)

    publisher = Publisher(publish)
    publisher.start()
    try:
        publisher.collected("a")
        assert writing.wait(10)
        for store in ("b", "c", "d"):
            publisher.collected(store)
        release.set()
        deadline = time.monotonic() + 10
        while publisher.published != {"a", "b", "c", "d"} and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        publisher.stop(5)
    # The first write was for "a"; the three that ended meanwhile took one more write.
    assert writes == [frozenset(), frozenset({"a"})]
    assert publisher.published == {"a", "b", "c", "d"}


def test_a_write_that_waits_rather_than_computes_is_not_followed_by_a_long_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write's wall time is mostly waiting for the interpreter while collections run:
    the pause after it follows its CPU time, or /metrics would lag seconds behind."""
    monkeypatch.setattr(publisher_module, "MIN_PAUSE", 0.0)
    waited = 0.4
    ended: list[float] = []
    started: list[float] = []
    first_done = threading.Event()

    def publish() -> None:
        started.append(time.monotonic())
        if len(started) == 1:
            time.sleep(waited)  # no CPU: stands for a write starved of the interpreter
            ended.append(time.monotonic())
            first_done.set()

    publisher = Publisher(publish)
    publisher.start()
    try:
        publisher.collected("a")
        time.sleep(0.05)
        publisher.collected("b")  # ends during the first write
        assert first_done.wait(10)
        deadline = time.monotonic() + 10
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        publisher.stop(5)
    assert len(started) == 2
    # Paced by wall time, the second write would wait PAUSE_FACTOR * 0.4 s = 2 s.
    assert started[1] - ended[0] < waited * PAUSE_FACTOR / 4


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time."""
    spent = time.thread_time()
    while time.thread_time() - spent < seconds:
        pass


@pytest.mark.parametrize("store_meanwhile", ["new", "published before"])
def test_a_store_never_published_waits_at_most_a_short_pause(
    monkeypatch: pytest.MonkeyPatch, store_meanwhile: str
) -> None:
    """A fleet's first writes encode every store once, seconds of CPU: a store that came up
    meanwhile waits at most MAX_PAUSE_FOR_NEW_STORES; a store published before waits the
    whole pause, PAUSE_FACTOR times the write's CPU time."""
    monkeypatch.setattr(publisher_module, "MAX_PAUSE_FOR_NEW_STORES", 0.2)
    burned = 0.2  # the whole pause: PAUSE_FACTOR * 0.2 s = 1 s
    writes: list[tuple[float, float]] = []
    second_done = threading.Event()

    def publish() -> None:
        started = time.monotonic()
        if len(writes) == 1:
            publisher.collected("b" if store_meanwhile == "new" else "a")
            burn(burned)
        writes.append((started, time.monotonic()))
        if len(writes) == 3:
            second_done.set()

    publisher = Publisher(publish)
    publisher.start()
    try:
        publisher.collected("a")
        deadline = time.monotonic() + 10
        while len(writes) < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        publisher.collected("a")  # the second write, during which another store ends
        assert second_done.wait(10)
    finally:
        publisher.stop(5)
    gap = writes[2][0] - writes[1][1]
    if store_meanwhile == "new":
        assert 0.15 < gap < burned * PAUSE_FACTOR / 2
    else:
        assert gap > burned * PAUSE_FACTOR * 0.8


def test_writes_are_at_least_the_minimum_pause_apart() -> None:
    """Each write makes the next scrape write every store's ages again: collections ending
    every few milliseconds are published together, at most twice a second."""
    starts: list[float] = []

    publisher = Publisher(lambda: starts.append(time.monotonic()))
    publisher.start()
    try:
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            publisher.collected("a")
            time.sleep(0.005)
    finally:
        publisher.stop(5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert 2 <= len(starts) <= 5
    assert all(gap >= publisher_module.MIN_PAUSE * 0.95 for gap in gaps), gaps


def test_every_second_ticks_just_after_each_whole_second_until_stopped() -> None:
    ticks: list[float] = []
    ticker = EverySecond(lambda: ticks.append(time.monotonic()))
    ticker.start()
    time.sleep(2.6)
    ticker.stop(5)
    stopped = len(ticks)
    time.sleep(1.1)
    assert len(ticks) == stopped
    assert 2 <= stopped <= 3
    # Each just past a whole second of the clock the snapshot's seconds are counted on.
    assert all(0.0 <= tick % 1.0 < 0.2 for tick in ticks), ticks
