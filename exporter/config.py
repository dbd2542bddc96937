"""Configuration: the YAML file parsed once into validated, immutable objects."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url

from exporter.durations import parse_duration
from exporter.hints import type_problem, unreadable, url_problem

# Table and column names are put into SQL (quoted); anything beyond a plain identifier,
# optionally schema-qualified, is refused outright rather than trusted to quoting.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_STORE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_.:-]{1,64}$")


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` name each key path and reason."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))

    def render(self) -> str:
        lines = [f"invalid configuration {self.source}:"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def _parse_duration(value: object) -> object:
    """Accept seconds as a number or a Prometheus-style duration such as ``1m30s``."""
    if isinstance(value, bool):
        return value  # let pydantic reject it with its own message
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration (use seconds or e.g. 15s, 1m30s, 500ms)"
            ) from None
    return value


# Bounded above: timers and the databases' timeout settings overflow on absurd values.
MAX_SECONDS = 7 * 86400.0
Seconds = Annotated[
    float, BeforeValidator(_parse_duration), Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)
]
SecondsOrZero = Annotated[
    float, BeforeValidator(_parse_duration), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)
]


def _check_identifier(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier (letters, digits, _ and $; "
            "optionally schema.table)"
        )
    return value


SqlName = Annotated[str, AfterValidator(_check_identifier)]


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, populate_by_name=True
    )


def _values_list(value: object) -> object:
    if isinstance(value, str):
        return [value]
    return value


StoreValues = Annotated[tuple[str, ...], BeforeValidator(_values_list), Field(min_length=1)]

DEFAULT_ERROR_CODE_PATTERN = r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*:"
"""The code of a message written `CODE: text`, e.g. `UNABLE_TO_LOCK_ROW: unable to obtain...`."""


def _check_pattern(value: str) -> str:
    try:
        compiled = re.compile(value)
    except re.error as error:
        raise ValueError(f"{value!r} is not a regular expression: {error}") from None
    if compiled.groups < 1:
        raise ValueError(
            f"{value!r} has no group: put the code in parentheses, "
            f"e.g. {DEFAULT_ERROR_CODE_PATTERN}"
        )
    return value


ErrorCodePattern = Annotated[str, AfterValidator(_check_pattern)]


class RowFilter(_Frozen):
    """The rows of a table that play a role: those whose ``column`` holds one of ``values``."""

    column: SqlName
    values: StoreValues


class _Table(_Frozen):
    """A table of the store and the names of its columns."""


class QueueTable(_Table):
    """The queue of pending changes (reference: ``sync_queue``)."""

    table: SqlName = "sync_queue"
    object_type: SqlName = "object_type"
    operation: SqlName = "operation"
    direction: SqlName = "direction"
    enqueued_at: SqlName = "enqueued_at"
    record_id: SqlName = "record_id"
    filter: RowFilter | None = None
    # A queue row that says its last attempt failed: a retry count above 0, or a last error.
    retries: SqlName | None = None
    last_error: SqlName | None = None
    error_code_pattern: ErrorCodePattern = DEFAULT_ERROR_CODE_PATTERN


class HistoryTable(_Table):
    """Changes synced successfully (reference: ``sync_history``, append-only)."""

    table: SqlName = "sync_history"
    # Rows move from ``table`` into it (same id and timestamp) once processed.
    archive_table: SqlName | None = None
    id: SqlName = "id"
    object_type: SqlName = "object_type"
    operation: SqlName = "operation"
    direction: SqlName = "direction"
    enqueued_at: SqlName = "enqueued_at"
    synced_at: SqlName = "synced_at"
    filter: RowFilter | None = None


class ErrorTable(_Table):
    """Failed attempts (reference: ``sync_error``, append-only)."""

    table: SqlName = "sync_error"
    archive_table: SqlName | None = None
    id: SqlName = "id"
    object_type: SqlName = "object_type"
    operation: SqlName = "operation"
    direction: SqlName = "direction"
    # None: the code is taken from the message by ``error_code_pattern``.
    error_code: SqlName | None = "error_code"
    error_code_pattern: ErrorCodePattern = DEFAULT_ERROR_CODE_PATTERN
    failed_at: SqlName = "failed_at"
    record_id: SqlName = "record_id"
    record_name: SqlName | None = "record_name"
    error_message: SqlName = "error_message"
    filter: RowFilter | None = None


class SingleTable(_Table):
    """One table for the whole lifecycle of a change, told apart by a status column."""

    table: SqlName
    id: SqlName = "id"
    status: SqlName = "status"
    object_type: SqlName = "object_type"
    operation: SqlName = "operation"
    direction: SqlName = "direction"
    record_id: SqlName = "record_id"
    record_name: SqlName | None = "record_name"
    enqueued_at: SqlName = "enqueued_at"
    synced_at: SqlName = "synced_at"
    failed_at: SqlName = "failed_at"
    error_code: SqlName | None = "error_code"
    error_code_pattern: ErrorCodePattern = DEFAULT_ERROR_CODE_PATTERN
    error_message: SqlName = "error_message"


class StatusValues(_Frozen):
    """The values of the status column that mean pending, synced and failed."""

    pending: StoreValues = ("pending",)
    synced: StoreValues = ("synced",)
    failed: StoreValues = ("failed",)

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        seen: dict[str, str] = {}
        for name, values in self:
            for value in values:
                if value in seen:
                    raise ValueError(
                        f"status value {value!r} is listed under both {seen[value]} and {name}"
                    )
                seen[value] = name
        return self


def _check_label_value(value: str | None) -> str | None:
    if value is not None and (not _LABEL_VALUE.fullmatch(value) or value == "other"):
        raise ValueError(
            f"{value!r} is not a usable label value (lower-case letters, digits, _.:-; "
            "'other' is reserved)"
        )
    return value


LabelValue = Annotated[str | None, AfterValidator(_check_label_value)]


class Constants(_Frozen):
    """Label values for a store without the column: one object, only upserts, one direction."""

    object_type: LabelValue = None
    operation: LabelValue = None
    direction: LabelValue = None


class StoreMapping(_Frozen):
    """How a real store maps onto the reference store."""

    queue: QueueTable = QueueTable()
    # None: the store keeps no such table; the metrics it feeds are absent.
    history: HistoryTable | None = HistoryTable()
    errors: ErrorTable | None = ErrorTable()
    single_table: SingleTable | None = None
    status_values: StatusValues = StatusValues()
    constants: Constants = Constants()
    # Waiting changes with an error row for the same record newer than their queue row
    # (crmsync_failing_records); wants an index on the errors' (record_id, failed_at).
    failing_from_errors: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_layout(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("single_table") is not None:
            mixed = sorted(key for key in ("queue", "history", "errors") if key in data)
            if mixed:
                raise ValueError(
                    f"single_table cannot be combined with {', '.join(mixed)}: "
                    "a store has either three tables or one"
                )
        return data

    def roles(self) -> tuple[QueueTable, HistoryTable | None, ErrorTable | None]:
        """Where waiting changes, synced changes and failed attempts live, whatever the layout.

        A status table is the three roles of one table, told apart by status.
        """
        single = self.single_table
        if single is None:
            return self.queue, self.history, self.errors
        statuses = self.status_values

        def status(values: tuple[str, ...]) -> RowFilter:
            return RowFilter(column=single.status, values=values)

        labels = {
            "table": single.table,
            "object_type": single.object_type,
            "operation": single.operation,
            "direction": single.direction,
        }
        queue = QueueTable(
            **labels,
            enqueued_at=single.enqueued_at,
            record_id=single.record_id,
            filter=status(statuses.pending),
        )
        history = HistoryTable(
            **labels,
            id=single.id,
            enqueued_at=single.enqueued_at,
            synced_at=single.synced_at,
            filter=status(statuses.synced),
        )
        errors = ErrorTable(
            **labels,
            id=single.id,
            error_code=single.error_code,
            error_code_pattern=single.error_code_pattern,
            failed_at=single.failed_at,
            record_id=single.record_id,
            record_name=single.record_name,
            error_message=single.error_message,
            filter=status(statuses.failed),
        )
        return queue, history, errors

    @model_validator(mode="after")
    def _failing_source(self) -> Self:
        if not self.failing_from_errors:
            return self
        if self.single_table is not None:
            raise ValueError(
                "failing_from_errors needs an errors table apart from the queue "
                "(a status table keeps one row per change)"
            )
        if self.errors is None:
            raise ValueError("failing_from_errors needs an errors table")
        if self.errors.archive_table is not None:
            raise ValueError("failing_from_errors reads one errors table: not with archive_table")
        return self


def _label_mapping(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _values_list(values) for key, values in value.items()}
    return value


LabelMapping = Annotated[dict[str, StoreValues], BeforeValidator(_label_mapping)]


def _check_label_values(mapping: dict[str, tuple[str, ...]], what: str) -> None:
    if not mapping:
        raise ValueError(f"at least one {what} is needed")
    owner: dict[str, str] = {}
    for label, values in mapping.items():
        if not _LABEL_VALUE.fullmatch(label) or label == "other":
            raise ValueError(
                f"{label!r} is not a usable label value (lower-case letters, digits, _.:-; "
                "'other' is reserved)"
            )
        for value in values:
            key = value.lower()
            if key in owner and owner[key] != label:
                raise ValueError(f"store value {value!r} maps to both {owner[key]} and {label}")
            owner[key] = label


class StoreConfig(_Frozen):
    """One sync store to read."""

    name: str
    url: str
    password_env: str | None = None
    password_file: Path | None = None
    interval: Seconds = 15.0
    query_timeout: Seconds = 10.0
    # How long a writer's transaction may stay open: rows that commit later than this
    # after a newer row was seen may be missed; smaller values re-check less.
    settle_time: Seconds = 300.0
    # How long a counter series seen for the first time reads 0 before it counts: every
    # Prometheus scraping the exporter must see the 0, or increase() misses the first step.
    new_counter_hold: SecondsOrZero = 60.0
    objects: tuple[str, ...] = ("lead", "contact", "account", "opportunity")
    operations: LabelMapping = {"insert": ("insert",), "update": ("update",)}
    directions: LabelMapping = {"to_crm": ("to_crm",), "from_crm": ("from_crm",)}
    max_objects: int = Field(default=100, ge=1, le=10_000)
    max_error_codes: int = Field(default=50, ge=1, le=10_000)
    # Whose clock hours crmsync_records_synced_last_hour counts (an IANA name).
    last_hour_time_zone: str = "UTC"
    # The zone whose wall-clock time the store's timestamp columns without a zone hold.
    naive_time_zone: str = "UTC"
    # A named mapping of a well-known engine's store (see exporter.presets).
    preset: Literal["heroku-connect"] | None = None
    # Where table names without a schema are looked up (the connection's default if unset).
    schema_: SqlName | None = Field(default=None, alias="schema")
    # Where a person opens a failed record in the CRM: the dashboards link each record there.
    crm_record_url: str | None = None
    mapping: StoreMapping = StoreMapping()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _STORE_NAME.fullmatch(value):
            raise ValueError("use 1-64 letters, digits or _.:-")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("preset") is not None:
            from exporter.presets import apply_preset

            return apply_preset(dict(data))
        return data

    @field_validator("last_hour_time_zone", "naive_time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        time_zone(value)
        return value

    @field_validator("crm_record_url")
    @classmethod
    def _crm_record_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_record_url(value)
        return value

    @field_validator("objects")
    @classmethod
    def _objects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(item.lower() for item in value)
        for item in lowered:
            if not _LABEL_VALUE.fullmatch(item) or item == "other":
                raise ValueError(f"{item!r} is not a usable object name")
        if len(set(lowered)) != len(lowered):
            raise ValueError("objects are listed twice")
        return lowered

    @field_validator("operations")
    @classmethod
    def _operations(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        _check_label_values(value, "operation")
        return value

    @field_validator("directions")
    @classmethod
    def _directions(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        _check_label_values(value, "direction")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if len(self.objects) > self.max_objects:
            raise ValueError(
                f"{len(self.objects)} objects are listed but max_objects is {self.max_objects}"
            )
        constants = self.mapping.constants
        for key, constant in (
            ("objects", constants.object_type),
            ("operations", constants.operation),
            ("directions", constants.direction),
        ):
            if constant is not None and key in self.model_fields_set:
                raise ValueError(
                    f"{key} has no effect where mapping.constants gives the label "
                    f"({constant!r}): leave one of them out"
                )
        return self

    def database_url(self) -> URL:
        """The URL with its password filled in from the environment or a file."""
        url = make_url(self.url)
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(
                    f"store {self.name!r}",
                    [
                        f"password_env: environment variable {self.password_env} is not set "
                        "(set it in the exporter's environment, or use password_file)"
                    ],
                )
            return url.set(password=password)
        if self.password_file is not None:
            try:
                password = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, ValueError) as error:
                # Never the decoding error's text: it quotes bytes of the secret.
                if isinstance(error, UnicodeDecodeError):
                    reason = f"{self.password_file} is not UTF-8 text"
                elif isinstance(error, OSError):
                    reason = unreadable(self.password_file, error)
                else:
                    reason = f"cannot read {self.password_file!r}: {error}"
                raise ConfigError(f"store {self.name!r}", [f"password_file: {reason}"]) from None
            return url.set(password=password)
        return url

    @property
    def last_hour_zone(self) -> ZoneInfo:
        return time_zone(self.last_hour_time_zone)

    @property
    def naive_zone(self) -> ZoneInfo:
        return time_zone(self.naive_time_zone)

    def display_url(self) -> str:
        """The URL for logs and messages, never with its password."""
        return make_url(self.url).render_as_string(hide_password=True)


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin, Asia/Kolkata)"
        ) from None


RECORD_URL_FIELDS = ("object", "record_id")
"""The placeholders a CRM record URL may use: {object} and {record_id}."""
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check_record_url(template: str) -> None:
    """An http(s) URL whose only placeholders are {object} and {record_id}; else ValueError."""
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{template!r} is not an http(s) URL")
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(RECORD_URL_FIELDS))
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}: use {{object}} and {{record_id}}")
    if "{record_id}" not in template:
        raise ValueError("the URL must contain {record_id}")
    if "$" in template or any(c in _PLACEHOLDER.sub("", template) for c in "{}"):
        # Grafana reads $ as the start of a variable; stray braces are a typo.
        raise ValueError("the URL may not contain '$' or braces other than the placeholders")


class Config(_Frozen):
    """The whole configuration file."""

    stores: tuple[StoreConfig, ...]

    @field_validator("stores")
    @classmethod
    def _unique_names(cls, value: tuple[StoreConfig, ...]) -> tuple[StoreConfig, ...]:
        if not value:
            raise ValueError("list at least one store")
        names = [store.name for store in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"store name {name!r} is used twice")
        return value


def _key_path(location: Sequence[int | str]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tuple[", "dict[", "list[")):
            continue  # pydantic's internal validator steps, not keys a user wrote
        elif not part.isprintable() or not part.strip() or any(c in part for c in ".[]'\""):
            path += f"[{part!r}]"  # a key the user wrote oddly: quoted, on one line
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def validation_problem(error: Mapping[str, Any]) -> str:
    location = list(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{_key_path(location)}: unknown key"
    if error["type"] == "missing":
        return f"{_key_path(location)}: required key is missing"
    if error["type"] == "value_error":
        return f"{_key_path(location)}: {message}"
    keys = [part for part in location if isinstance(part, str)]
    key = keys[-1] if keys else ""
    return f"{_key_path(location)}: {type_problem(error['type'], message, error.get('input'), key)}"


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate YAML text; raise ConfigError naming every problem with its key path."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(source, [f"YAML syntax{where}: {reason}"]) from None
    except RecursionError:
        raise ConfigError(source, ["YAML syntax: nested too deeply"]) from None
    if not isinstance(document, dict):
        raise ConfigError(source, ["(top level): expected a mapping with a 'stores' list"])
    try:
        return Config.model_validate(document)
    except ValidationError as error:
        raise ConfigError(source, [validation_problem(e) for e in error.errors()]) from None


def load_config(path: Path) -> Config:
    """Read and validate a configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), [f"--config.file: {unreadable(path, error)}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), [f"--config.file: {path} is not UTF-8 text"]) from None
    return parse_config(text, str(path))


__all__ = [
    "Config",
    "ConfigError",
    "Constants",
    "ErrorTable",
    "HistoryTable",
    "QueueTable",
    "RowFilter",
    "SingleTable",
    "StatusValues",
    "StoreConfig",
    "StoreMapping",
    "load_config",
    "parse_config",
]
