"""The publisher: one write for however many collections ended meanwhile, paced by its CPU."""

from __future__ import annotations

import threading
import time

from exporter.publisher import PAUSE_FACTOR, Publisher


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


def test_a_write_that_waits_rather_than_computes_is_not_followed_by_a_long_pause() -> None:
    """A write's wall time is mostly waiting for the interpreter while collections run:
    the pause after it follows its CPU time, or /metrics would lag seconds behind."""
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
