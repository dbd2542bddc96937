"""/metrics bodies: the stores' families encoded into an immutable snapshot after collections.

prometheus_client's encoders write every body. Each store's samples are encoded when its
state changes and kept; a snapshot lays every family out once, its header then each store's
lines, each family compressed on its own and kept while its lines are. What moves between
collections (the oldest pending ages, the process's own metrics) is encoded, and compressed,
once a second for the scrapes of that second, and appended. A snapshot is encoded, and
compressed, in Prometheus's format and each other format scraped lately: the first scrape in
a new format encodes the latest snapshot in it too, the next collections encode it ahead.
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
from functools import partial
from typing import Any, cast

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import allocator
from exporter import metric_specs as specs
from exporter.labels import Series
from exporter.metrics import (
    STORE_FAMILIES,
    age_family,
    build_info,
    collection_families,
    store_ages,
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
_CHUNK = 1 << 20
_ZERO_VALUE = b"0.0\n"
_float_text = cast(Callable[[float], str], floatToGoString)
"""How both encoders write a sample's value."""
"""How an age line of value 0 ends: the value then the line's end, after a space."""
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
class Segment:
    """A run of the body's parts (one family: its header then each store's lines), deflated
    on its own so that a snapshot whose parts are the very same reuses it."""

    parts: tuple[bytes, ...]
    deflated: bytes
    """Raw deflate blocks of the parts, not final, ending on a byte boundary."""

    @classmethod
    def of(cls, parts: tuple[bytes, ...], kept: Segment | None) -> Segment:
        if (
            kept is not None
            and len(kept.parts) == len(parts)
            and all(old is new for old, new in zip(kept.parts, parts, strict=True))
        ):
            return kept
        compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15, 8)
        deflated = [compressor.compress(chunk) for chunk in _chunks(parts, _CHUNK)]
        deflated.append(compressor.flush(zlib.Z_SYNC_FLUSH))
        return cls(parts, b"".join(deflated))


@dataclass(frozen=True)
class Encoded:
    """The head of a body in one format, compressed, to be continued by each scrape's tail.

    Its text is not kept (Prometheus asks for gzip): ``text`` lays it out again for a scrape
    that does not.
    """

    text: Callable[[], bytes]
    deflated: bytes
    """Raw deflate blocks of the text, not final, ending on a byte boundary."""
    crc: int
    size: int
    segments: tuple[Segment, ...] = ()

    @classmethod
    def of(
        cls,
        runs: Iterable[tuple[bytes, ...]],
        text: Callable[[], bytes],
        previous: Encoded | None = None,
    ) -> Encoded:
        """Compresses the text from its runs of parts, a megabyte at a time, never whole;
        a run whose parts are those of ``previous``'s run at the same place is not
        compressed again (between collections most families of most stores are unchanged:
        compressing all of 500 stores' 20 MB took 60 ms a publication)."""
        kept = previous.segments if previous is not None else ()
        segments = []
        crc = size = 0
        for number, parts in enumerate(runs):
            segments.append(Segment.of(parts, kept[number] if number < len(kept) else None))
            for part in parts:
                crc = zlib.crc32(part, crc)
                size += len(part)
        deflated = b"".join(segment.deflated for segment in segments)
        return cls(text, deflated, crc, size, tuple(segments))

    def then(self, text: bytes) -> Encoded:
        """This head followed by ``text``, compressed on its own: scrapes of the same second
        share the ages this way, rather than each compressing them again (4 ms for 500
        stores)."""
        head = self.text
        return Encoded(
            lambda: head() + text,
            self.deflated + Segment.of((text,), None).deflated,
            zlib.crc32(text, self.crc),
            self.size + len(text),
        )

    def body(self, tail: bytes, compressed: bool) -> bytes:
        """The whole body: this head, then ``tail``; as one gzip member if ``compressed``."""
        if not compressed:
            return self.text() + tail
        size = (self.size + len(tail)) & 0xFFFFFFFF
        trailer = struct.pack("<II", zlib.crc32(tail, self.crc), size)
        return _GZIP_HEADER + self.deflated + _deflate_last(tail) + trailer


def _chunks(parts: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``parts`` joined into chunks of at least ``size`` bytes (the last may be shorter).

    zlib lets go of the interpreter on each call: thousands of small calls would each wait
    to get it back while the collections hold it.
    """
    buffered: list[bytes] = []
    length = 0
    for part in parts:
        buffered.append(part)
        length += len(part)
        if length >= size:
            yield b"".join(buffered)
            buffered, length = [], 0
    if buffered:
        yield b"".join(buffered)


def _deflate_last(data: bytes) -> bytes:
    """Raw deflate blocks ending the stream; the data is small: a small window compresses it
    as well, and faster."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -12, 1)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)


@dataclass(frozen=True)
class StoreText:
    """One store's samples as a snapshot encoded them, family by family."""

    store: str
    parts: tuple[Any, ...]
    """What each family showed of the store's state (``exporter.metrics.StoreFamily``)."""
    lines: Mapping[str, tuple[bytes, ...]]
    """By content type, each family's sample lines."""
    age_lines: Mapping[str, Mapping[Series, bytes]]
    """By content type, each oldest pending age's line up to its value (see ``Layout.ages``)."""

    @classmethod
    def encode(
        cls,
        state: StoreState,
        now: float,
        layouts: Mapping[str, Layout],
        kept: StoreText | None,
    ) -> StoreText:
        """The store's lines in the formats of ``layouts``: only the families whose part of
        the state differs from ``kept``'s are encoded again."""
        up = state.up(now)
        parts = tuple(family.source(state, up) for family in STORE_FAMILIES)
        backlog = state.gauges.backlog if state.gauges is not None else {}
        lines: dict[str, tuple[bytes, ...]] = {}
        age_lines: dict[str, Mapping[Series, bytes]] = {}
        for key, layout in layouts.items():
            before = None if kept is None else kept.lines.get(key)
            ages_before = None if kept is None else kept.age_lines.get(key)
            if kept is None or before is None or ages_before is None:
                lines[key] = layout.lines(state.store, parts, range(len(parts)), ())
                age_lines[key] = layout.age_lines(state.store, backlog)
                continue
            changed = [
                number
                for number, (old, new) in enumerate(zip(kept.parts, parts, strict=True))
                if not (old is new or old == new)
            ]
            lines[key] = layout.lines(state.store, parts, changed, before) if changed else before
            same_series = ages_before.keys() == backlog.keys()
            age_lines[key] = ages_before if same_series else layout.age_lines(state.store, backlog)
        return cls(state.store, parts, lines, age_lines)


@dataclass(frozen=True)
class Layout:
    """How one format lays the families out: each family's header (``# HELP``, ``# TYPE``)
    then its samples; the body is assembled from the stores' lines between the headers."""

    form: Format
    headers: tuple[bytes, ...]
    """Each family's header, in the order of ``exporter.metrics.STORE_FAMILIES``."""
    age_header: bytes

    @classmethod
    def of(cls, form: Format) -> Layout:
        empty = [family.spec.family() for family in STORE_FAMILIES]
        headers = tuple(form.encode([family], last=False) for family in empty)
        return cls(form, headers, form.encode([specs.OLDEST_AGE.gauge()], last=False))

    def age_lines(self, store: str, backlog: Mapping[Series, Any]) -> dict[Series, bytes]:
        """Each series' age line as the encoder writes it, up to the value.

        The ages move every second for every series: writing only their values per scrape,
        with the encoder's own float format, keeps a second's ages of hundreds of stores at
        milliseconds instead of the encoder's tenths of a second.
        """
        family = specs.OLDEST_AGE.gauge()
        for series in backlog:
            family.add_metric([store, *series], 0.0)
        text = self.form.encode([family], last=False)
        if not text.startswith(self.age_header):
            raise ValueError(f"no family header where {self.age_header[:60]!r} was due")
        lines = text[len(self.age_header) :].splitlines(keepends=True)
        if len(lines) != len(backlog) or not all(
            line.endswith(b" " + _ZERO_VALUE) for line in lines
        ):
            raise ValueError(f"unexpected age lines from the encoder: {lines[:1]!r}")
        return {
            series: line[: -len(_ZERO_VALUE)] for series, line in zip(backlog, lines, strict=True)
        }

    def ages(self, snapshot: Snapshot, now: float) -> bytes:
        """The oldest pending ages at ``now``, as the encoder would write ``age_family``."""
        key = self.form.content_type
        parts = [self.age_header]
        for state, text in zip(snapshot.states, snapshot.stores, strict=True):
            prefixes = text.age_lines[key]
            for series, value in store_ages(state, now).items():
                parts += (prefixes[series], _float_text(value).encode(), b"\n")
        return b"".join(parts)

    def lines(
        self,
        store: str,
        parts: Sequence[Any],
        changed: Iterable[int],
        before: Sequence[bytes],
    ) -> tuple[bytes, ...]:
        """A store's sample lines per family: the ``changed`` families encoded (in one call
        of the encoder, then cut at the headers), the others as ``before``."""
        numbers = list(changed)
        families = [STORE_FAMILIES[number].family(store, parts[number]) for number in numbers]
        text = self.form.encode(families, last=False)
        lines = list(before) or [b""] * len(self.headers)
        end = 0
        for position, number in enumerate(numbers):
            header = self.headers[number]
            if not text.startswith(header, end):  # the encoder would have changed its ways
                raise ValueError(f"no family header where {header[:60]!r} was due")
            start = end + len(header)
            following = numbers[position + 1] if position + 1 < len(numbers) else None
            end = len(text) if following is None else text.find(self.headers[following], start)
            lines[number] = text[start:end]
        return tuple(lines)

    def runs(self, stores: Sequence[StoreText], shared: bytes) -> Iterator[tuple[bytes, ...]]:
        """The body's parts: every family once, its header then each store's lines; then
        ``shared``."""
        key = self.form.content_type
        for number, header in enumerate(self.headers):
            yield (header, *(store.lines[key][number] for store in stores))
        yield (shared,)

    def assemble(self, stores: Sequence[StoreText], shared: bytes) -> bytes:
        return b"".join(part for run in self.runs(stores, shared) for part in run)


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
        # The same layout as before: its headers are the very parts Encoded.of compares.
        known = {} if previous is None else previous.layouts
        for form in formats:
            if form.content_type not in layouts:
                layouts[form.content_type] = known.get(form.content_type) or Layout.of(form)
        kept = {text.store: text for text in (previous or self).stores}
        stores = tuple(
            StoreText.encode(state, self.built_at, layouts, kept.get(state.store))
            for state in self.states
        )
        encoded = dict(self.encoded)
        for key, layout in layouts.items():
            if key not in encoded:
                shared = layout.form.encode([build_info()], last=False)
                encoded[key] = Encoded.of(
                    layout.runs(stores, shared),
                    partial(layout.assemble, stores, shared),
                    None if previous is None else previous.encoded.get(key),
                )
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
        process's own metrics), collected once a second (for a format encoded ahead)."""
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
        self._ages: dict[str, tuple[Snapshot, int, Encoded]] = {}
        """Per format, the body with the ages and extras last encoded, and their second."""
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
            self.prepare()
        except Exception:
            log.exception("encoding the metrics failed")
        # The previous snapshot is garbage now: give its pages back.
        allocator.trim()

    def page(self, accept: str, accept_encoding: str) -> Page:
        """The /metrics response for these request headers."""
        form = Format.negotiate(accept)
        now = self._clock()
        snapshot = self._current(now, form)
        compressed = gzip_accepted(accept_encoding)
        if form.content_type in snapshot.encoded:
            whole = self._of_the_second(snapshot, form, now, wait=False)
            return Page(whole.body(b"", compressed), form.content_type, compressed)
        # Past the bounded number of formats: encoded whole for this scrape.
        ages = form.encode([age_family(snapshot.states, now)], last=False)
        extras = form.encode(self._extras.collect())
        body = form.encode(snapshot.families(), last=False) + ages + extras
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

    def prepare(self) -> None:
        """Write the ages and the process's metrics of this second ahead of the scrapes, in
        each format scraped lately (once a second, and after each publication)."""
        now = self._clock()
        snapshot = self._snapshot
        with self._asking:
            formats = [form for form, asked in self._asked.values() if now - asked <= FORMAT_MEMORY]
        for form in formats:
            if form.content_type in snapshot.encoded:
                self._of_the_second(snapshot, form, now)
        with self._aging:  # nothing keeps an old snapshot alive for a format not scraped
            for key in set(self._ages) - {form.content_type for form in formats}:
                del self._ages[key]

    def _of_the_second(
        self, snapshot: Snapshot, form: Format, now: float, wait: bool = True
    ) -> Encoded:
        """The snapshot's body, then the ages at ``now`` and the process's own metrics;
        scrapes within the same second share them, so that a hundred scrapers cost little
        more than one, and a scrape needs the interpreter for little while collections
        keep it busy (reading /proc for the process's metrics alone takes it a dozen times).

        Unless ``wait``, while another thread writes them the last ones written are returned
        (ages at most a second old, or the previous publication's) rather than waiting.
        """
        second = math.floor(now)
        key = form.content_type
        kept = self._ages.get(key)
        if kept is not None and kept[0] is snapshot and kept[1] == second:
            return kept[2]
        if not self._aging.acquire(blocking=wait or kept is None):
            assert kept is not None
            return kept[2]
        try:
            kept = self._ages.get(key)
            if kept is not None and kept[0] is snapshot and kept[1] == second:
                return kept[2]
            ages = snapshot.layouts[key].ages(snapshot, now)
            extras = form.encode(self._extras.collect())
            whole = snapshot.encoded[key].then(ages + extras)
            self._ages[key] = (snapshot, second, whole)
            return whole
        finally:
            self._aging.release()

    def _replace(self, snapshot: Snapshot) -> None:
        # The ages of the previous snapshot stay until prepare() writes the new one's: a
        # scrape meanwhile is served them rather than waiting.
        self._snapshot = snapshot

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
