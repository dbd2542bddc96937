"""Turning a store's raw values into bounded label values (mapping, lower-casing, caps)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from exporter.config import StoreConfig

log = logging.getLogger(__name__)

OTHER = "other"
"""What a value over a cap, or outside a mapping, is reported as."""
UNKNOWN = "unknown"
"""What a missing or blank value is reported as."""
WHITESPACE = " \t\n\r\x0b\x0c"
"""Stripped from both ends of a value (the dashboards' SQL strips exactly these too)."""
MAX_LENGTH = 64
"""Label values are for grouping, not for carrying data: longer values are cut."""
# Remember at most this many distinct folded values, only to count them for a self-metric.
_FOLDED_MEMORY = 100_000
# Each folded value is logged once; past this many per label, one line says the rest are not.
_LOGGED_PER_LABEL = 100

Series = tuple[str, str, str]
"""(object, operation, direction) label values."""


class CappedLabel:
    """Keeps the first ``cap`` distinct values; later ones fold into ``other``.

    Assignments never change during the process's life, so a counter never moves
    from one series to another.
    """

    def __init__(
        self,
        cap: int,
        preset: Iterable[str] = (),
        lower: bool = True,
        on_fold: Callable[[str], None] | None = None,
    ) -> None:
        self._cap = cap
        self._lower = lower
        self._kept: set[str] = set(preset)
        self._folded: set[str] = set()
        self._on_fold = on_fold

    def __call__(self, raw: object) -> str:
        value = label_text(raw, self._lower)
        if value in self._kept:
            return value
        if len(self._kept) < self._cap:
            self._kept.add(value)
            return value
        if value not in self._folded and len(self._folded) < _FOLDED_MEMORY:
            self._folded.add(value)
            if self._on_fold is not None:
                self._on_fold(value)
        return OTHER

    @property
    def folded(self) -> int:
        """How many distinct values were folded into ``other``."""
        return len(self._folded)


class MappedLabel:
    """Maps store values onto configured label values; anything unmapped is ``other``."""

    def __init__(
        self, mapping: Mapping[str, Iterable[str]], on_fold: Callable[[str], None] | None = None
    ) -> None:
        self.values = tuple(mapping)
        self._lookup = {raw.lower(): label for label, raws in mapping.items() for raw in raws}
        self._unmapped: set[str] = set()
        self._on_fold = on_fold

    def __call__(self, raw: object) -> str:
        value = label_text(raw, lower=True)
        label = self._lookup.get(value)
        if label is not None:
            return label
        if value not in self._unmapped and len(self._unmapped) < _FOLDED_MEMORY:
            self._unmapped.add(value)
            if self._on_fold is not None:
                self._on_fold(value)
        return OTHER

    @property
    def folded(self) -> int:
        """How many distinct store values matched no configured label."""
        return len(self._unmapped)


class FoldWarning:
    """Logs each store value that folds into ``other``, once, saying why and what to change."""

    def __init__(self, store: str, label: str, reason: str) -> None:
        self._store = store
        self._label = label
        self._reason = reason
        self._logged = 0

    def __call__(self, value: str) -> None:
        self._logged += 1
        fields = {"store": self._store, "label": self._label}
        if self._logged <= _LOGGED_PER_LABEL:
            message = f'a store value reads {self._label}="other": {self._reason}'
            log.warning(message, extra={**fields, "value": value})
        elif self._logged == _LOGGED_PER_LABEL + 1:
            log.warning(
                f'more store values read {self._label}="other"; they are no longer logged one '
                "by one (crmsync_folded_label_values counts them)",
                extra=fields,
            )


class FixedLabel:
    """The one label value of a store without the column (``mapping.constants``)."""

    folded = 0

    def __init__(self, value: str) -> None:
        self.values = (value,)

    def __call__(self, _raw: object) -> str:
        return self.values[0]


class StoreLabels:
    """Every label decision for one store."""

    def __init__(self, config: StoreConfig) -> None:
        name = config.name
        constants = config.mapping.constants
        self.objects: CappedLabel | FixedLabel = CappedLabel(
            config.max_objects,
            preset=config.objects,
            on_fold=FoldWarning(name, "object", "more distinct objects than max_objects"),
        )
        self.configured_objects = config.objects
        if constants.object_type is not None:
            self.objects = FixedLabel(constants.object_type)
            self.configured_objects = (constants.object_type,)
        self.operations: MappedLabel | FixedLabel = (
            MappedLabel(
                config.operations,
                on_fold=FoldWarning(name, "operation", "operations maps no label to it"),
            )
            if constants.operation is None
            else FixedLabel(constants.operation)
        )
        self.directions: MappedLabel | FixedLabel = (
            MappedLabel(
                config.directions,
                on_fold=FoldWarning(name, "direction", "directions maps no label to it"),
            )
            if constants.direction is None
            else FixedLabel(constants.direction)
        )
        self.error_codes = CappedLabel(
            config.max_error_codes,
            lower=False,
            on_fold=FoldWarning(name, "error_code", "more distinct codes than max_error_codes"),
        )

    def series(self, raw_object: object, raw_operation: object, raw_direction: object) -> Series:
        return (
            self.objects(raw_object),
            self.operations(raw_operation),
            self.directions(raw_direction),
        )

    def zero_filled(self) -> list[Series]:
        """Every configured object x operation x direction: the series always present."""
        return [
            (obj, operation, direction)
            for obj in self.configured_objects
            for operation in self.operations.values
            for direction in self.directions.values
        ]

    def folded_counts(self) -> dict[str, int]:
        return {
            "object": self.objects.folded,
            "operation": self.operations.folded,
            "direction": self.directions.folded,
            "error_code": self.error_codes.folded,
        }


def label_text(raw: object, lower: bool) -> str:
    """A store value as label text: stripped, ``unknown`` when blank, cut, maybe lower-cased.

    The dashboards' SQL (crmsync_tools.dashboard_sql) applies the same steps in the same order.
    """
    if raw is None:
        return UNKNOWN
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip(WHITESPACE)
    if not text:
        return UNKNOWN
    text = text[:MAX_LENGTH]
    return text.lower() if lower else text
