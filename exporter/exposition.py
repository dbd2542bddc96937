"""/metrics bodies: families written fast, and those unchanged since the last scrape reused.

prometheus_client's encoders check every character of every name on every scrape, some 100 ms
for the 5,000 series of a large store. Here a family is written once per object: a collector
that hands out the same family objects until its next collection (``SyncStoreCollector`` does)
has them written, and compressed, once per collection rather than once per scrape. What the
fast writer does not cover (exemplars, timestamps, native histograms, unusual names or
escapings) is written by prometheus_client itself, so the output is always its output.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import allocator

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FAST_ESCAPINGS = frozenset({"underscores", "allow-utf-8"})
# Samples the text format moves into gauges of their own: left to prometheus_client.
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_TEXT_TYPES["unknown"] = "untyped"
_GZIP_LEVEL = 1
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2 asks for."""
log = logging.getLogger(__name__)
_value: Callable[[float], str] = floatToGoString  # untyped in prometheus_client


@dataclass(frozen=True)
class Format:
    """The exposition format negotiated from an Accept header."""

    content_type: str
    openmetrics: bool
    fast: bool
    """Whether the fast writer gives exactly what ``encoder`` gives for plain families."""
    encoder: Callable[[Collector], bytes]


def negotiate(accept: str) -> Format:
    encoder, content_type = choose_encoder(accept)
    parameters = dict(
        part.strip().split("=", 1) for part in content_type.split(";")[1:] if "=" in part
    )
    version = parameters.get("version", "0.0.4")
    fast = parameters.get("escaping", "underscores") in _FAST_ESCAPINGS and (
        version == "0.0.4" or version.startswith("1.")
    )
    openmetrics = content_type.startswith("application/openmetrics-text")
    return Format(content_type, openmetrics, fast, encoder)


class _One(Collector):
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


def write_family(metric: Metric, form: Format) -> str:
    """One family as ``form.encoder`` writes it (without OpenMetrics' closing ``# EOF``)."""
    text = _fast(metric, form.openmetrics) if form.fast else None
    if text is None:
        text = form.encoder(_One(metric)).decode()
        if form.openmetrics:
            text = text.removesuffix("# EOF\n")
    return text


def _escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _fast(metric: Metric, openmetrics: bool) -> str | None:
    name = metric.name
    if not _METRIC_NAME.fullmatch(name):
        return None
    if openmetrics:
        lines = [f"# HELP {name} {_escape(metric.documentation)}\n# TYPE {name} {metric.type}\n"]
        if metric.unit:
            lines.append(f"# UNIT {name} {metric.unit}\n")
    else:
        shown = name + {"counter": "_total", "info": "_info"}.get(metric.type, "")
        kind = _TEXT_TYPES.get(metric.type, metric.type)
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines = [f"# HELP {shown} {help_text}\n# TYPE {shown} {kind}\n"]
    # Label names in the order they are written, per set of names (checked once each).
    orders: dict[tuple[str, ...], tuple[str, ...]] = {}
    plain: dict[str, bool] = {}
    for sample in metric.samples:
        ok = plain.get(sample.name)
        if ok is None:
            ok = plain[sample.name] = _plain_name(sample.name, name, openmetrics)
        if not ok or sample.timestamp is not None or sample.exemplar is not None:
            return None
        if getattr(sample, "native_histogram", None) is not None:
            return None
        labels = sample.labels
        if labels:
            keys = tuple(labels)
            order = orders.get(keys)
            if order is None:
                if not all(_LABEL_NAME.fullmatch(key) for key in keys):
                    return None
                order = orders[keys] = tuple(sorted(keys))
            text = ",".join([f'{key}="{_escape(labels[key])}"' for key in order])
            lines.append(f"{sample.name}{{{text}}} {_value(sample.value)}\n")
        else:
            lines.append(f"{sample.name} {_value(sample.value)}\n")
    return "".join(lines)


def _plain_name(sample: str, family: str, openmetrics: bool) -> bool:
    if not _METRIC_NAME.fullmatch(sample):
        return False
    if not openmetrics and sample.startswith(family):
        return sample[len(family) :] not in _OPENMETRICS_ONLY
    return True


@dataclass
class _Written:
    """Families written in one format, kept while their objects are handed out."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    texts: dict[int, tuple[Metric, bytes]] = field(default_factory=dict)
    writing: dict[int, threading.Event] = field(default_factory=dict)
    """Families being written: one scrape writes a family, the others wait for its text."""
    pinned: frozenset[int] = frozenset()
    """Families written ahead of being handed out (``Exposition.refresh``): kept meanwhile."""
    deflated: dict[tuple[int, ...], tuple[bytes, int, int]] = field(default_factory=dict)
    """Leading families of a body -> their deflate blocks, CRC-32 and length (the last two)."""


def _deflate(data: bytes, final: bool, window_bits: int = 15) -> bytes:
    """Raw deflate blocks; unless ``final``, ending on a byte boundary so more can follow."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -window_bits, 1 if final else 8)
    return compressor.compress(data) + compressor.flush(
        zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH
    )


# A gzip member: this header, deflate blocks, then the CRC-32 and size of the whole text. The
# prefix's blocks are kept; each scrape appends its own final blocks, from a compressor with a
# small window (its text is small), and carries the CRC on from the prefix's.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class Preparing(Protocol):
    """A collector that can build its next families before handing them out."""

    def preparing(self) -> AbstractContextManager[list[Metric]]: ...


class Exposition:
    """Bodies for /metrics from one registry, with the work of unchanged families reused."""

    def __init__(self, registry: Collector) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._written: dict[tuple[Any, ...], _Written] = {}

    def refresh(self, source: Preparing) -> None:
        """Write and compress ``source``'s next families, in Prometheus's format, before any
        scrape gets them (called after each collection)."""
        form = negotiate(PROMETHEUS_ACCEPT)
        written = self._slot(form)
        try:
            with source.preparing() as families:
                texts = [self._text(written, metric, form)[0] for metric in families]
                ids = tuple(id(metric) for metric in families)
                with written.lock:
                    # Forget what neither this collection nor the one still served wrote:
                    # render() prunes only the slot it serves, and none may serve this one.
                    for stale in written.texts.keys() - written.pinned - set(ids):
                        del written.texts[stale]
                    written.pinned = frozenset(ids)
                self._deflated(written, ids, texts)
        except Exception:
            log.exception("writing the metrics failed")
        # The previous collection's families are garbage now: give their pages back.
        allocator.trim()

    def render(self, accept: str, gzip: bool) -> tuple[bytes, str, bool]:
        """(body, content type, whether the body is gzip-compressed)."""
        form = negotiate(accept)
        families = list(self.registry.collect())
        written = self._slot(form)
        parts: list[bytes] = []
        reused = 0
        unchanged = True
        for metric in families:
            text, _ = self._text(written, metric, form)
            # The head of the body written ahead by refresh() is compressed once, too.
            unchanged = unchanged and id(metric) in written.pinned
            parts.append(text)
            if unchanged:
                reused = len(parts)
        if form.openmetrics:
            parts.append(b"# EOF\n")
        current = {id(metric) for metric in families} | written.pinned
        with written.lock:
            # Forget families no longer handed out (their ids may be reused).
            for stale in written.texts.keys() - current:
                del written.texts[stale]
        if not gzip:
            return b"".join(parts), form.content_type, False
        prefix = tuple(id(metric) for metric in families[:reused])
        deflated, crc, size = self._deflated(written, prefix, parts[:reused])
        tail = b"".join(parts[reused:])
        trailer = struct.pack("<II", zlib.crc32(tail, crc), (size + len(tail)) & 0xFFFFFFFF)
        body = _GZIP_HEADER + deflated + _deflate(tail, final=True, window_bits=12) + trailer
        return body, form.content_type, True

    def _slot(self, form: Format) -> _Written:
        # The fast writer's output is the same for every version and escaping it accepts.
        key = (form.openmetrics, True) if form.fast else (form.openmetrics, form.content_type)
        with self._lock:
            return self._written.setdefault(key, _Written())

    @staticmethod
    def _text(written: _Written, metric: Metric, form: Format) -> tuple[bytes, bool]:
        """The family's text, and whether this call wrote it."""
        while True:
            with written.lock:
                hit = written.texts.get(id(metric))
                if hit is not None and hit[0] is metric:
                    return hit[1], False
                busy = written.writing.get(id(metric))
                if busy is None:
                    written.writing[id(metric)] = threading.Event()
            if busy is None:
                break
            busy.wait()
        try:
            text = write_family(metric, form).encode()
            with written.lock:
                written.texts[id(metric)] = (metric, text)
        finally:
            with written.lock:
                written.writing.pop(id(metric)).set()
        return text, True

    @staticmethod
    def _deflated(
        written: _Written, prefix: tuple[int, ...], texts: list[bytes]
    ) -> tuple[bytes, int, int]:
        with written.lock:
            hit = written.deflated.get(prefix)
        if hit is None:
            head = b"".join(texts)
            hit = (_deflate(head, final=False), zlib.crc32(head), len(head))
            with written.lock:
                # The current body's head, and the next one's while it is being prepared.
                while len(written.deflated) >= 2:
                    del written.deflated[next(iter(written.deflated))]
                written.deflated[prefix] = hit
        return hit
