"""/metrics bodies: families written fast, and those unchanged since the last scrape reused.

prometheus_client's encoders check every character of every name on every scrape, some 100 ms
for the 5,000 series of a large store. Here a family is written once per object: a collector
that hands out the same family objects until its next collection (``SyncStoreCollector`` does)
has them written, and compressed, once per collection rather than once per scrape. What the
fast writer does not cover (exemplars, timestamps, native histograms, unusual names or
escapings) is written by prometheus_client itself, so the output is always its output.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FAST_ESCAPINGS = frozenset({"underscores", "allow-utf-8"})
# Samples the text format moves into gauges of their own: left to prometheus_client.
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_TEXT_TYPES["unknown"] = "untyped"
_GZIP_LEVEL = 1
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
    label_names: set[str] = set()
    for sample in metric.samples:
        if not _plain(sample, name, openmetrics):
            return None
        if sample.labels:
            for label in sample.labels.keys() - label_names:
                if not _LABEL_NAME.fullmatch(label):
                    return None
                label_names.add(label)
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{sample.name}{{{labels}}} {_value(sample.value)}\n")
        else:
            lines.append(f"{sample.name} {_value(sample.value)}\n")
    return "".join(lines)


def _plain(sample: Sample, family: str, openmetrics: bool) -> bool:
    if sample.timestamp is not None or sample.exemplar is not None:
        return False
    if getattr(sample, "native_histogram", None) is not None:
        return False
    if not openmetrics and sample.name.startswith(family):
        return sample.name[len(family) :] not in _OPENMETRICS_ONLY
    return True


@dataclass
class _Written:
    """Families written in one format, kept while their objects are handed out."""

    texts: dict[int, tuple[Metric, bytes]] = field(default_factory=dict)
    prefix: tuple[int, ...] = ()
    """The families at the head of the last body, compressed in ``compressor``."""
    compressed_prefix: bytes = b""
    compressor: Any = None


class Exposition:
    """Bodies for /metrics from one registry, with the work of unchanged families reused."""

    def __init__(self, registry: Collector) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._written: dict[tuple[bool, bool, str], _Written] = {}

    def render(self, accept: str, gzip: bool) -> tuple[bytes, str, bool]:
        """(body, content type, whether the body is gzip-compressed)."""
        form = negotiate(accept)
        families = list(self.registry.collect())
        key = (form.openmetrics, form.fast, form.content_type)
        with self._lock:
            written = self._written.setdefault(key, _Written())
            known = written.texts
        texts: dict[int, tuple[Metric, bytes]] = {}
        parts: list[bytes] = []
        reused = 0
        for metric in families:
            hit = known.get(id(metric))
            if hit is not None and hit[0] is metric:
                text = hit[1]
                reused += 1 if reused == len(parts) else 0
            else:
                text = write_family(metric, form).encode()
            texts[id(metric)] = (metric, text)
            parts.append(text)
        if form.openmetrics:
            parts.append(b"# EOF\n")
        prefix = tuple(id(metric) for metric in families[:reused])
        with self._lock:
            written.texts = texts
            if not gzip:
                return b"".join(parts), form.content_type, False
            if prefix and prefix == written.prefix and written.compressor is not None:
                compressor = written.compressor.copy()
                head = written.compressed_prefix
            else:
                compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
                head = compressor.compress(b"".join(parts[:reused]))
                head += compressor.flush(zlib.Z_SYNC_FLUSH)
                written.prefix, written.compressed_prefix = prefix, head
                written.compressor = compressor.copy()
        tail = compressor.compress(b"".join(parts[reused:])) + compressor.flush()
        return head + tail, form.content_type, True
