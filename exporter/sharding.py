"""Sharding: which of the configured stores one of N exporters keeps, and the metric naming it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config import StoreConfig
from exporter.metric_specs import SHARD


def shard_of(store_name: str, count: int) -> int:
    """The shard a store belongs to among ``count``, the same in every process and release.

    Python's ``hash()`` of a string changes with each interpreter start, so the first eight
    bytes of the name's SHA-256 decide instead.
    """
    digest = hashlib.sha256(store_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; the default, 0 of 1, keeps every store."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"the count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"the index must be from 0 to {self.count - 1}, got {self.index}")

    def keeps(self, store: StoreConfig) -> bool:
        return shard_of(store.name, self.count) == self.index

    def select(self, stores: Sequence[StoreConfig]) -> tuple[StoreConfig, ...]:
        """The stores of this shard, in the configuration's order."""
        return tuple(store for store in stores if self.keeps(store))

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


class ShardInfo(Collector):
    """``crmsync_shard_info{index, count} 1``: the shard this exporter serves."""

    def __init__(self, shard: Shard) -> None:
        # One family object for the process's life.
        self._family = SHARD.info()
        self._family.add_metric([], {"index": str(shard.index), "count": str(shard.count)})

    def collect(self) -> Iterator[Metric]:
        yield self._family
