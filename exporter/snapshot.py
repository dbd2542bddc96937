"""/metrics bodies: the stores' families encoded into an immutable snapshot after collections.

prometheus_client's encoders write every body. Each store's samples are encoded when its
state changes and kept; a snapshot lays every family out once, its header then each store's
lines. What moves between collections (the oldest pending ages, the process's own metrics)
is encoded per scrape and appended. A snapshot is encoded, and compressed, in Prometheus's
format and each other format scraped lately: the first scrape in a new format encodes the
latest snapshot in it too, the next collections encode it ahead.
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import allocator
from exporter.metrics import (
    StoreFamilies,
    age_family,
    build_info,
    collection_families,
    store_families,
)
from exporter.runner import StoreState

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2 asks for."""
FORMAT_MEMORY = 600.0
"""A format not scraped for this long is no longer encoded ahead (longer than any scrape
interval, so that a slow scraper is still served from the snapshot)."""
MAX_FORMATS = 4
"""At most this many formats are encoded ahead; more (odd Accept headers) are encoded per scrape."""
_GZIP_LEVEL = 1
# A gzip member: this header, deflate blocks, then the CRC-32 and size of the whole text. A
# snapshot keeps its text's blocks; each scrape appends the final blocks of its own part and
# carries the CRC on.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
log = logging.getLogger(__name__)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


@dataclass(frozen=True)
class Format:
    """An exposition format, as prometheus_client negotiates it from an Accept header."""

    content_type: str
    encoder: Callable[[Collector], bytes]

    @classmethod
    def negotiate(cls, accept: str) -> Format:
        encoder, content_type = choose_encoder(accept)
        return cls(content_type, encoder)

    def encode(self, families: Iterable[Metric], last: bool = True) -> bytes:
        """The families as prometheus_client writes them (OpenMetrics' ``# EOF`` if ``last``)."""
        text = self.encoder(_Families(families))
        if not last and self.content_type.startswith("application/openmetrics-text"):
            text = text.removesuffix(b"# EOF\n")
        return text


@dataclass(frozen=True)
class Encoded:
    """The head of a body in one format: its text, and the same compressed, to be continued."""

    text: bytes
    deflated: bytes
    """Raw deflate blocks of ``text``, not final, ending on a byte boundary."""
    crc: int

    @classmethod
    def of(cls, text: bytes) -> Encoded:
        return cls(text, _deflate(text, final=False), zlib.crc32(text))

    def body(self, tail: bytes, compressed: bool) -> bytes:
        """The whole body: this head, then ``tail``; as one gzip member if ``compressed``."""
        if not compressed:
            return self.text + tail
        size = (len(self.text) + len(tail)) & 0xFFFFFFFF
        trailer = struct.pack("<II", zlib.crc32(tail, self.crc), size)
        # The tail is small: a small window compresses it as well, and faster.
        return _GZIP_HEADER + self.deflated + _deflate(tail, final=True, window_bits=12) + trailer


def _deflate(data: bytes, final: bool, window_bits: int = 15) -> bytes:
    """Raw deflate blocks; unless ``final``, ending on a byte boundary so more can follow."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -window_bits, 1 if final else 8)
    flush = zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH
    return compressor.compress(data) + compressor.flush(flush)


@dataclass(frozen=True)
class StoreText:
    """One store's samples as a snapshot encoded them; kept while its state is the same."""

    state: StoreState
    up: bool
    """Whether the store was up when encoded (stale gauges are left out)."""
    lines: Mapping[str, tuple[bytes, ...]]
    """By content type, each family's sample lines (``exporter.metrics.store_families``)."""

    @classmethod
    def encode(
        cls,
        state: StoreState,
        now: float,
        layouts: Mapping[str, Layout],
        kept: StoreText | None,
    ) -> StoreText:
        """The store's lines in the formats of ``layouts``; what ``kept`` holds of the same
        state is not encoded again."""
        up = state.up(now)
        lines: dict[str, tuple[bytes, ...]] = {}
        if kept is not None and kept.state is state and kept.up == up:
            lines = {key: value for key, value in kept.lines.items() if key in layouts}
        missing = [key for key in layouts if key not in lines]
        if missing:
            families = store_families(state, now)
            for key in missing:
                lines[key] = layouts[key].split(families)
        return cls(state, up, lines)


@dataclass(frozen=True)
class Layout:
    """How one format lays the families out: each family's header (``# HELP``, ``# TYPE``)
    then its samples; the body is assembled from the stores' lines between the headers."""

    form: Format
    texts: tuple[bytes, ...]
    """Each family's header, in the order of ``exporter.metrics.store_families``."""

    @classmethod
    def of(cls, form: Format) -> Layout:
        empty = StoreFamilies().families()
        return cls(form, tuple(form.encode([family], last=False) for family in empty))

    def split(self, families: Sequence[Metric]) -> tuple[bytes, ...]:
        """The families' sample lines, family by family, as the encoder writes them."""
        text = self.form.encode(families, last=False)
        lines: list[bytes] = []
        end = 0
        for number, header in enumerate(self.texts):
            if not text.startswith(header, end):  # the encoder would have changed its ways
                raise ValueError(f"no family header where {header[:60]!r} was due")
            start = end + len(header)
            following = self.texts[number + 1] if number + 1 < len(self.texts) else None
            end = len(text) if following is None else text.find(following, start)
            lines.append(text[start:end])
        return tuple(lines)

    def assemble(self, stores: Sequence[StoreText], shared: bytes) -> bytes:
        """Every family once: its header, then each store's lines; then ``shared``."""
        key = self.form.content_type
        parts: list[bytes] = []
        for number, header in enumerate(self.texts):
            parts.append(header)
            parts.extend(store.lines[key][number] for store in stores)
        parts.append(shared)
        return b"".join(parts)


@dataclass(frozen=True)
class Snapshot:
    """The stores' metrics as one collection left them, encoded; never changed once built."""

    states: tuple[StoreState, ...]
    built_at: float
    stale_at: float
    """Before this no store up at build time can have gone stale (its gauges vanish)."""
    up_states: tuple[StoreState, ...]
    """The stores up at build time."""
    layouts: Mapping[str, Layout]
    """The formats encoded ahead, by content type."""
    stores: tuple[StoreText, ...]
    """Each store's lines, in the formats encoded ahead."""
    encoded: Mapping[str, Encoded]
    """The body but the ages and the extras, by content type, in the formats encoded ahead."""

    @classmethod
    def build(
        cls,
        states: Sequence[StoreState],
        now: float,
        formats: Iterable[Format],
        previous: Snapshot | None = None,
    ) -> Snapshot:
        """Encodes only the stores whose state changed since ``previous``."""
        up_states = tuple(state for state in states if state.up(now))
        stale_at = min((state.fresh_until for state in up_states), default=math.inf)
        snapshot = cls(tuple(states), now, stale_at, up_states, {}, (), {})
        return snapshot.adding(formats, previous)

    def stale(self, now: float) -> bool:
        """Whether a store up at build time has gone stale since: a new snapshot is due.

        A store waiting for a worker stays up past ``fresh_until`` (see StoreState.up), so
        that alone does not make the snapshot stale: rebuilding on each scrape while stores
        wait in the queue would stall the scrapes.
        """
        return now > self.stale_at and any(not state.up(now) for state in self.up_states)

    def families(self) -> list[Metric]:
        """The families of ``encoded``, for a format not encoded ahead."""
        return collection_families(self.states, self.built_at)

    def adding(self, formats: Iterable[Format], previous: Snapshot | None = None) -> Snapshot:
        """The same snapshot, encoded in ``formats`` too (reusing ``previous``'s stores)."""
        layouts = dict(self.layouts)
        for form in formats:
            layouts.setdefault(form.content_type, Layout.of(form))
        kept = {text.state.store: text for text in (previous or self).stores}
        stores = tuple(
            StoreText.encode(state, self.built_at, layouts, kept.get(state.store))
            for state in self.states
        )
        encoded = dict(self.encoded)
        for key, layout in layouts.items():
            if key not in encoded:
                shared = layout.form.encode([build_info()], last=False)
                encoded[key] = Encoded.of(layout.assemble(stores, shared))
        return replace(self, layouts=layouts, stores=stores, encoded=encoded)


@dataclass(frozen=True)
class Page:
    """A /metrics response."""

    body: bytes
    content_type: str
    compressed: bool
    """Whether ``body`` is gzip-compressed (``Content-Encoding: gzip``)."""


class LatestSnapshot:
    """The snapshot scrapes read, replaced whole after each collection.

    Scrapes never wait for a collection's encoding; only the first scrape in a new format, or
    the first after a store's gauges went stale, waits for the snapshot it makes.
    """

    def __init__(
        self,
        states: Callable[[], Sequence[StoreState]],
        extras: Collector,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``states`` the stores' current states; ``extras`` what else /metrics serves (the
        process's own metrics), collected per scrape."""
        self._states = states
        self._extras = extras
        self._clock = clock
        self._building = threading.Lock()
        self._asking = threading.Lock()
        self._aging = threading.Lock()
        # What Prometheus asks for is encoded from the first collection on, before it asks.
        prometheus = Format.negotiate(PROMETHEUS_ACCEPT)
        self._asked: dict[str, tuple[Format, float]] = {
            prometheus.content_type: (prometheus, clock())
        }
        """Formats scraped lately, by content type, and when last."""
        self._ages: dict[str, tuple[Snapshot, int, bytes]] = {}
        """The ages last encoded per format, and the second they are of."""
        self._snapshot = Snapshot.build(tuple(states()), clock(), ())

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def publish(self) -> None:
        """Encode the stores' current states (after each collection); until done, scrapes
        get the previous snapshot."""
        try:
            with self._building:
                self._replace(self._build())
        except Exception:
            log.exception("encoding the metrics failed")
        # The previous snapshot is garbage now: give its pages back.
        allocator.trim()

    def page(self, accept: str, accept_encoding: str) -> Page:
        """The /metrics response for these request headers."""
        form = Format.negotiate(accept)
        now = self._clock()
        snapshot = self._current(now, form)
        tail = self._encoded_ages(snapshot, form, now) + form.encode(self._extras.collect())
        compressed = gzip_accepted(accept_encoding)
        encoded = snapshot.encoded.get(form.content_type)
        if encoded is not None:
            return Page(encoded.body(tail, compressed), form.content_type, compressed)
        body = form.encode(snapshot.families(), last=False) + tail
        if compressed:
            body = gzip.compress(body, _GZIP_LEVEL, mtime=0)
        return Page(body, form.content_type, compressed)

    def _current(self, now: float, form: Format) -> Snapshot:
        """The latest snapshot, encoded in ``form`` unless too many formats are asked for."""
        snapshot = self._snapshot
        wanted = self._note(form, now)
        if not snapshot.stale(now) and (form.content_type in snapshot.encoded or not wanted):
            return snapshot
        with self._building:  # scrapes in the same new format wait for the first one's work
            snapshot = self._snapshot
            if snapshot.stale(now):
                # A store's gauges went stale without a collection ending (its cycle hangs):
                # the first scrape after builds the snapshot that shows it down.
                self._replace(self._build())
            elif wanted and form.content_type not in snapshot.encoded:
                self._replace(snapshot.adding([form]))
            return self._snapshot

    def _encoded_ages(self, snapshot: Snapshot, form: Format, now: float) -> bytes:
        """The ages at ``now``; scrapes within the same second share them, so that a hundred
        scrapers cost little more than one."""
        if form.content_type not in snapshot.encoded:  # past the bounded number of formats
            return form.encode([age_family(snapshot.states, now)], last=False)
        second = math.floor(now)
        # Scrapes that arrive together wait for the first one's text rather than each
        # encoding the same ages at once.
        with self._aging:
            kept = self._ages.get(form.content_type)
            if kept is not None and kept[0] is snapshot and kept[1] == second:
                return kept[2]
            text = form.encode([age_family(snapshot.states, now)], last=False)
            self._ages[form.content_type] = (snapshot, second, text)
            return text

    def _replace(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        with self._aging:
            self._ages.clear()  # nothing keeps the previous snapshot alive

    def _build(self) -> Snapshot:
        now = self._clock()
        with self._asking:
            for content_type, (_, asked) in list(self._asked.items()):
                if now - asked > FORMAT_MEMORY:
                    del self._asked[content_type]
            formats = [form for form, _ in self._asked.values()]
        return Snapshot.build(tuple(self._states()), now, formats, self._snapshot)

    def _note(self, form: Format, now: float) -> bool:
        """Remember that ``form`` was scraped; whether it is one of the formats encoded ahead."""
        with self._asking:
            if form.content_type in self._asked or len(self._asked) < MAX_FORMATS:
                self._asked[form.content_type] = (form, now)
                return True
            return False
