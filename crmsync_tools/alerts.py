"""Generate the crmsync recording and alerting rules from alerts/config.yaml.

Usage, from the repository's root:
    crmsync-alerts            # rewrite alerts/recording_rules.yml and alerting_rules.yml
    crmsync-alerts --check    # exit 1 if the committed files are not current
    crmsync-alerts --scale 60 --output-dir /tmp/rules
                              # every duration divided by 60, for fast end-to-end runs

Recording rule names keep the nominal windows of the configuration when scaled, so that
the scaled rules reference each other exactly like the committed ones.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crmsync_tools.generated_files import check_generated, write_generated
from exporter.arguments import command_parser, setup_logging_from
from exporter.durations import UNIT_SECONDS, parse_duration
from exporter.metric_specs import LATENCY

ALERTS_DIR = Path("alerts")
DEFAULT_CONFIG = ALERTS_DIR / "config.yaml"
RECORDING_FILE = "recording_rules.yml"
ALERTING_FILE = "alerting_rules.yml"

# Upper bounds of crmsync_sync_latency_seconds, in whole seconds as the rules write them.
LATENCY_BUCKETS_SECONDS = tuple(int(bound) for bound in LATENCY.buckets)

# Backlog, freshness, throughput and errors are judged per store, object and direction:
# the object dashboard's variables. Inserts and updates are summed.
BY = "store, object, direction"
LEVEL = "store_object_direction"

SEVERITIES = ("critical", "warning")

# Largest unit first, as Prometheus writes a duration.
_UNITS_MS = {unit: round(seconds * 1000) for unit, seconds in UNIT_SECONDS.items()}


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message starts with its key path."""


# --- durations and numbers -------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Duration:
    """A Prometheus duration in milliseconds."""

    ms: int

    @classmethod
    def parse(cls, text: str) -> Duration:
        try:
            millis = parse_duration(text) * 1000
        except ValueError:
            raise ValueError(f"expected a duration like 90s, 5m, 1h or 1d, got {text!r}") from None
        total = round(millis)
        if abs(millis - total) > 1e-6:
            raise ValueError(f"expected whole milliseconds, got {text!r}")
        if total <= 0:
            raise ValueError(f"expected a positive duration, got {text!r}")
        return cls(total)

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def scaled(self, factor: int) -> Duration:
        return Duration(max(1, round(self.ms / factor)))

    def __str__(self) -> str:
        rest, parts = self.ms, []
        for unit, size in _UNITS_MS.items():
            count, rest = divmod(rest, size)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)


# The error budget's period, as in the SRE workbook's burn rate factors.
SLO_PERIOD = Duration(30 * _UNITS_MS["d"])


def num(value: float) -> str:
    """Format a number for PromQL without a spurious fraction."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def percent(value: float) -> str:
    return f"{num(round(value * 100, 6))}%"


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class DurationTier:
    """One severity of an alert whose threshold is a duration (an age, a horizon)."""

    severity: str
    limit: Duration
    for_: Duration


@dataclass(frozen=True)
class RatioTier:
    """One severity of an alert whose threshold is a ratio."""

    severity: str
    ratio: float
    for_: Duration


@dataclass(frozen=True)
class BurnRate:
    severity: str
    long: Duration
    short: Duration
    factor: float
    for_: Duration


@dataclass(frozen=True)
class Config:
    selector: str
    grafana_url: str
    runbook_url: str
    rate_window: Duration
    latency_quantiles: tuple[float, ...]
    gap_tolerance: Duration
    keep_firing_for: Duration
    stall_window: Duration
    stall_max_work_share: float
    stall_for: Duration
    backlog_limit: int
    backlog_limit_for: Duration
    backlog_window: Duration
    backlog_growth_window: Duration
    backlog_tiers: tuple[DurationTier, ...]
    freshness_tiers: tuple[DurationTier, ...]
    error_ratio_window: Duration
    error_ratio_min_attempts: int
    error_ratio_min_errors: int
    error_ratio_tiers: tuple[RatioTier, ...]
    error_code_window: Duration
    error_code_baseline: Duration
    error_code_dominant_share: float
    error_code_rare_share: float
    error_code_min_errors: int
    error_code_for: Duration
    latency_threshold: Duration
    latency_target: float
    latency_min_changes: int
    burn_rates: tuple[BurnRate, ...]
    store_down_for: Duration
    exporter_down_for: Duration
    exporter_absent_for: Duration
    collection_failures_window: Duration
    collection_failures_share: float
    collection_failures_recent: Duration
    collection_failures_for: Duration
    future_timestamps_for: Duration
    folded_label_values_for: Duration
    open_id_gaps_limit: int
    open_id_gaps_for: Duration


class _Reader:
    """Typed access to the parsed YAML that reports errors with their key path."""

    def __init__(self, data: Any, path: str = "") -> None:
        self.path = path
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or '<top level>'}: expected a mapping")
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            raise ConfigError(f"{self._key(key)}: missing")
        return self.data[key]

    def child(self, key: str) -> _Reader:
        return _Reader(self.raw(key), self._key(key))

    def items(self, key: str) -> list[_Reader]:
        value = self.raw(key)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{self._key(key)}: expected a non-empty list")
        return [_Reader(item, f"{self._key(key)}[{i}]") for i, item in enumerate(value)]

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self._key(key)}: expected a non-empty string")
        return value.strip()

    def url(self, key: str) -> str:
        value = self.text(key)
        if not re.match(r"^https?://[^\s{}]+$", value):
            raise ConfigError(f"{self._key(key)}: expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def duration(self, key: str) -> Duration:
        value = self.raw(key)
        try:
            return Duration.parse(str(value))
        except ValueError as exc:
            raise ConfigError(f"{self._key(key)}: {exc}") from None

    def number(self, key: str, *, low: float, high: float, integer: bool = False) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._key(key)}: expected a number, got {value!r}")
        if integer and not float(value).is_integer():
            raise ConfigError(f"{self._key(key)}: expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{self._key(key)}: expected {num(low)} to {num(high)}, got {value}")
        return float(value)

    def ratio(self, key: str) -> float:
        value = self.number(key, low=0, high=1)
        if value in (0, 1):
            raise ConfigError(f"{self._key(key)}: expected a value between 0 and 1, got {value}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self._key(unknown[0])}: unknown key")


def _duration_tiers(section: _Reader, key: str) -> tuple[DurationTier, ...]:
    tiers = []
    for severity in SEVERITIES:
        tier = section.child(severity)
        tiers.append(DurationTier(severity, tier.duration(key), tier.duration("for")))
        tier.done()
    return tuple(tiers)


def _ratio_tiers(section: _Reader, key: str) -> tuple[RatioTier, ...]:
    tiers = []
    for severity in SEVERITIES:
        tier = section.child(severity)
        tiers.append(RatioTier(severity, tier.ratio(key), tier.duration("for")))
        tier.done()
    return tuple(tiers)


def load_config(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"<{path.name}>: not valid YAML: {exc}") from None
    top = _Reader(data)

    selector = top.text("selector")
    if not re.match(r'^\s*[a-zA-Z_]\w*\s*(=|!=|=~|!~)\s*"', selector):
        raise ConfigError(f'selector: expected label matchers like job="crmsync", got {selector!r}')

    urls = top.child("urls")
    grafana_url, runbook_url = urls.url("grafana"), urls.url("runbook")
    urls.done()

    quantiles_raw = top.raw("latency_quantiles")
    if not isinstance(quantiles_raw, list) or not quantiles_raw:
        raise ConfigError("latency_quantiles: expected a non-empty list of numbers")
    quantiles = []
    for i, q in enumerate(quantiles_raw):
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q < 1:
            raise ConfigError(f"latency_quantiles[{i}]: expected a number between 0 and 1")
        quantiles.append(float(q))

    gap_tolerance = top.duration("gap_tolerance")
    keep_firing_for = top.duration("keep_firing_for")

    stall = top.child("stall")
    stall_window = stall.duration("window")
    stall_share = stall.ratio("max_work_share")
    stall_for = stall.duration("for")
    stall.done()
    if gap_tolerance >= stall_window:
        # a store that cannot be read freezes its counters: were its last gauges held for a
        # whole stall window, it would look stalled
        raise ConfigError("gap_tolerance: must be shorter than stall.window")

    backlog = top.child("backlog")
    backlog_limit = int(backlog.number("limit", low=1, high=1e12, integer=True))
    backlog_limit_for = backlog.duration("limit_for")
    backlog_window = backlog.duration("window")
    backlog_growth_window = backlog.duration("growth_window")
    backlog_tiers = _duration_tiers(backlog, "horizon")
    backlog.done()

    freshness = top.child("freshness")
    freshness_tiers = _duration_tiers(freshness, "age")
    freshness.done()

    errors = top.child("error_ratio")
    error_ratio_window = errors.duration("window")
    error_ratio_attempts = int(errors.number("min_attempts", low=1, high=1e9, integer=True))
    error_ratio_min = int(errors.number("min_errors", low=1, high=1e9, integer=True))
    error_ratio_tiers = _ratio_tiers(errors, "ratio")
    errors.done()

    code = top.child("error_code")
    code_window, code_baseline = code.duration("window"), code.duration("baseline")
    dominant, rare = code.ratio("dominant_share"), code.ratio("rare_share")
    if rare >= dominant:
        raise ConfigError("error_code.rare_share: must be smaller than error_code.dominant_share")
    code_min = int(code.number("min_errors", low=1, high=1e9, integer=True))
    code_for = code.duration("for")
    code.done()

    slo = top.child("latency_slo")
    threshold = slo.duration("threshold")
    if threshold.ms % 1000 or threshold.ms // 1000 not in LATENCY_BUCKETS_SECONDS:
        buckets = " ".join(str(Duration(b * 1000)) for b in LATENCY_BUCKETS_SECONDS)
        raise ConfigError(
            f"latency_slo.threshold: must be a histogram bucket ({buckets}), got {threshold}"
        )
    target = slo.ratio("target")
    min_changes = int(slo.number("min_changes", low=1, high=1e12, integer=True))
    burn_rates = []
    for item in slo.items("burn_rates"):
        severity = item.text("severity")
        if severity not in SEVERITIES:
            raise ConfigError(f"{item.path}.severity: expected critical or warning")
        long, short = item.duration("long"), item.duration("short")
        if short >= long:
            raise ConfigError(f"{item.path}.short: must be shorter than long")
        factor = item.number("factor", low=0.001, high=1 / (1 - target))
        burn_rates.append(BurnRate(severity, long, short, factor, item.duration("for")))
        item.done()
    slo.done()

    fors = {}
    for name in (
        "store_down",
        "exporter_down",
        "exporter_absent",
        "future_timestamps",
        "folded_label_values",
    ):
        section = top.child(name)
        fors[name] = section.duration("for")
        section.done()

    failures = top.child("collection_failures")
    failures_window, failures_share = failures.duration("window"), failures.ratio("share")
    failures_recent, failures_for = failures.duration("recent"), failures.duration("for")
    failures.done()
    if failures_recent >= failures_for:
        raise ConfigError("collection_failures.recent: must be shorter than its for")

    gaps = top.child("open_id_gaps")
    gaps_limit = int(gaps.number("limit", low=1, high=1e9, integer=True))
    gaps_for = gaps.duration("for")
    gaps.done()

    config = Config(
        selector=selector,
        grafana_url=grafana_url,
        runbook_url=runbook_url,
        rate_window=top.duration("rate_window"),
        latency_quantiles=tuple(quantiles),
        gap_tolerance=gap_tolerance,
        keep_firing_for=keep_firing_for,
        stall_window=stall_window,
        stall_max_work_share=stall_share,
        stall_for=stall_for,
        backlog_limit=backlog_limit,
        backlog_limit_for=backlog_limit_for,
        backlog_window=backlog_window,
        backlog_growth_window=backlog_growth_window,
        backlog_tiers=backlog_tiers,
        freshness_tiers=freshness_tiers,
        error_ratio_window=error_ratio_window,
        error_ratio_min_attempts=error_ratio_attempts,
        error_ratio_min_errors=error_ratio_min,
        error_ratio_tiers=error_ratio_tiers,
        error_code_window=code_window,
        error_code_baseline=code_baseline,
        error_code_dominant_share=dominant,
        error_code_rare_share=rare,
        error_code_min_errors=code_min,
        error_code_for=code_for,
        latency_threshold=threshold,
        latency_target=target,
        latency_min_changes=min_changes,
        burn_rates=tuple(burn_rates),
        store_down_for=fors["store_down"],
        exporter_down_for=fors["exporter_down"],
        exporter_absent_for=fors["exporter_absent"],
        collection_failures_window=failures_window,
        collection_failures_share=failures_share,
        collection_failures_recent=failures_recent,
        collection_failures_for=failures_for,
        future_timestamps_for=fors["future_timestamps"],
        folded_label_values_for=fors["folded_label_values"],
        open_id_gaps_limit=gaps_limit,
        open_id_gaps_for=gaps_for,
    )
    top.done()
    return config


# --- rules ---------------------------------------------------------------------------------

Rule = dict[str, Any]


class Builder:
    """Builds the rule groups; `scale` divides every duration of the configuration."""

    def __init__(self, config: Config, scale: int = 1) -> None:
        self.c = config
        self.scale = scale

    # A duration as it appears in an expression, a `for` or a threshold: scaled.
    def d(self, duration: Duration) -> Duration:
        return duration.scaled(self.scale)

    def secs(self, duration: Duration) -> str:
        return num(self.d(duration).seconds)

    def sel(self, metric: str, extra: str = "") -> str:
        matchers = ", ".join(m for m in (self.c.selector, extra) if m)
        return f"{metric}{{{matchers}}}"

    def recorded(self, metric: str, operation: str, window: Duration | None = None) -> str:
        """Name of a recording rule; windows in names stay nominal, whatever the scale."""
        suffix = str(window) if window is not None else ""
        return f"{LEVEL}:{metric}:{operation}{suffix}"

    # Links ------------------------------------------------------------------------------

    def runbook(self, alert: str) -> str:
        return f"{self.c.runbook_url}#{alert.lower()}"

    def dashboard(self, uid: str, *variables: str) -> str:
        query = "&".join(f"var-{v}={{{{ $labels.{v} | urlquery }}}}" for v in variables)
        return f"{self.c.grafana_url}/d/{uid}" + (f"?{query}" if query else "")

    def object_dashboard(self) -> str:
        return self.dashboard("crmsync-object", "store", "object", "direction")

    def alert(
        self,
        name: str,
        expr: str,
        for_: Duration,
        severity: str,
        summary: str,
        description: str,
        dashboard_url: str,
        extra_labels: Mapping[str, str] | None = None,
        keep_firing: bool = False,
    ) -> Rule:
        """An alert; ``keep_firing`` adds the configured keep_firing_for (alerts on data)."""
        labels = {"severity": severity, **(extra_labels or {})}
        timing = {"for": str(self.d(for_))}
        if keep_firing:
            timing["keep_firing_for"] = str(self.d(self.c.keep_firing_for))
        return {
            "alert": name,
            "expr": expr,
            **timing,
            "labels": labels,
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": self.runbook(name),
                "dashboard_url": dashboard_url,
            },
        }

    # Recording rules ----------------------------------------------------------------------

    def rate_windows(self) -> list[Duration]:
        return sorted({self.c.rate_window, self.c.error_ratio_window})

    def slo_windows(self) -> list[Duration]:
        windows = {self.c.rate_window}
        for burn in self.c.burn_rates:
            windows.update((burn.long, burn.short))
        return sorted(windows)

    def le_matcher(self) -> str:
        # client libraries write le="1800" or le="1800.0"; Prometheus 2 keeps the text as is
        return f'le=~"{num(self.d(self.c.latency_threshold).seconds)}([.]0)?"'

    def recording_groups(self) -> list[dict[str, Any]]:
        c, rw = self.c, self.c.rate_window
        pending = self.recorded("crmsync_pending_records", "sum")
        deriv = self.recorded("crmsync_pending_records", "deriv", rw)
        rules: list[Rule] = [
            {
                "record": pending,
                "expr": f"sum by ({BY}) ({self.sel('crmsync_pending_records')})",
            },
            {
                "record": self.recorded("crmsync_oldest_pending_age_seconds", "max"),
                "expr": f"max by ({BY}) ({self.sel('crmsync_oldest_pending_age_seconds')})",
            },
        ]
        for window in self.rate_windows():
            rng = self.d(window)
            synced = self.recorded("crmsync_records_synced", "rate", window)
            errors = self.recorded("crmsync_sync_errors", "rate", window)
            rules += [
                {
                    "record": synced,
                    "expr": f"sum by ({BY}) "
                    f"(rate({self.sel('crmsync_records_synced_total')}[{rng}]))",
                },
                {
                    # objects without any failure have no error series: they read 0
                    "record": errors,
                    "expr": f"sum by ({BY}) (rate({self.sel('crmsync_sync_errors_total')}[{rng}]))"
                    f"\nor\n0 * {synced}",
                },
                {
                    "record": self.recorded(
                        "crmsync_sync_errors_per_attempts", "ratio_rate", window
                    ),
                    # an object whose every attempt failed has no synced series: ratio 1
                    "expr": f"{errors}\n/\n({errors} + ({synced} or 0 * {errors}))",
                },
            ]
        rng = self.d(rw)
        synced_rw = self.recorded("crmsync_records_synced", "rate", rw)
        errors_rw = self.recorded("crmsync_sync_errors", "rate", rw)
        bucket_rate = f"{LEVEL}_le:crmsync_sync_latency_seconds_bucket:rate{rw}"
        rules += [
            {
                "record": f"{LEVEL}_error_code:crmsync_sync_errors:rate{rw}",
                "expr": f"sum by ({BY}, error_code) "
                f"(rate({self.sel('crmsync_sync_errors_total')}[{rng}]))",
            },
            {
                "record": deriv,
                "expr": f"sum by ({BY}) (deriv({self.sel('crmsync_pending_records')}[{rng}]))",
            },
            {
                # changes entering the queue: those that left it (synced or failed) plus its
                # growth; a failed attempt that is retried later counts once per attempt
                "record": self.recorded("crmsync_records_arrived", "rate", rw),
                "expr": f"clamp_min(\n  {synced_rw}\n  + {errors_rw}\n  + {deriv},\n  0\n)",
            },
            {
                # 0 when nothing waits, +Inf while the backlog does not shrink
                "record": self.recorded("crmsync_backlog_drain_time_seconds", "deriv", rw),
                "expr": f"({pending} > 0)\n/\nclamp_min(-{deriv}, 0)\nor\n{pending} == 0",
            },
            {
                "record": bucket_rate,
                "expr": f"sum by ({BY}, le) "
                f"(rate({self.sel('crmsync_sync_latency_seconds_bucket')}[{rng}]))",
            },
        ]
        for quantile in c.latency_quantiles:
            rules.append(
                {
                    "record": f"{LEVEL}_quantile:crmsync_sync_latency_seconds:"
                    f"histogram_quantile_rate{rw}",
                    "expr": f"histogram_quantile({num(quantile)}, {bucket_rate})",
                    "labels": {"quantile": num(quantile)},
                }
            )

        slo_rules: list[Rule] = []
        for window in self.slo_windows():
            rng = self.d(window)
            good = self.sel("crmsync_sync_latency_seconds_bucket", self.le_matcher())
            total = self.sel("crmsync_sync_latency_seconds_count")
            slo_rules.append(
                {
                    "record": self.recorded(
                        "crmsync_sync_latency_within_objective", "ratio_rate", window
                    ),
                    "expr": f"sum by ({BY}) (rate({good}[{rng}]))\n/\n"
                    f"sum by ({BY}) (rate({total}[{rng}]))",
                }
            )
        return [
            {"name": "crmsync.rules", "rules": rules},
            {"name": "crmsync-latency-slo.rules", "rules": slo_rules},
        ]

    # Alerts -----------------------------------------------------------------------------

    def where(self) -> str:
        return "{{ $labels.object }} changes {{ $labels.direction }} in store {{ $labels.store }}"

    def held(self, aggregation: str, metric: str, by: str = BY) -> str:
        """A gauge's last value within the gap tolerance: failed scrapes leave no hole."""
        return (
            f"{aggregation} by ({by}) "
            f"(last_over_time({self.sel(metric)}[{self.d(self.c.gap_tolerance)}]))"
        )

    def increase(self, metric: str, window: Duration, by: str = BY) -> str:
        return f"sum by ({by}) (increase({self.sel(metric)}[{self.d(window)}]))"

    def attempts(self, window: Duration) -> str:
        """Synced changes plus failed attempts: one selector, so either may be missing."""
        both = '__name__=~"crmsync_records_synced_total|crmsync_sync_errors_total"'
        return f"sum by ({BY}) (increase({{{both}, {self.c.selector}}}[{self.d(window)}]))"

    def store_read(self) -> str:
        """Alerts on a store's data hold only while the store was read within the tolerance."""
        return (
            "and on (store)\n"
            f"max by (store) (max_over_time({self.sel('crmsync_up')}"
            f"[{self.d(self.c.gap_tolerance)}])) == 1"
        )

    def backlog_alerts(self) -> list[Rule]:
        c = self.c
        pending = self.sel("crmsync_pending_records")
        rules = [
            self.alert(
                "CrmSyncBacklogTooLarge",
                f"{self.held('sum', 'crmsync_pending_records')} > {c.backlog_limit}\n"
                f"{self.store_read()}",
                c.backlog_limit_for,
                "critical",
                summary="More changes of a CRM sync wait than its limit allows.",
                description=(
                    f"{{{{ $value | humanize }}}} {self.where()} wait to be synced, more than "
                    f"the limit of {c.backlog_limit}."
                ),
                dashboard_url=self.object_dashboard(),
                keep_firing=True,
            )
        ]
        for tier in c.backlog_tiers:
            expr = (
                f"sum by ({BY}) (\n"
                f"  predict_linear({pending}[{self.d(c.backlog_window)}], "
                f"{self.secs(tier.limit)})\n"
                f") > {c.backlog_limit}\n"
                f"and on ({BY})\n"
                f"sum by ({BY}) (deriv({pending}[{self.d(c.backlog_growth_window)}])) > 0\n"
                f"{self.store_read()}"
            )
            rules.append(
                self.alert(
                    "CrmSyncBacklogGrowing",
                    expr,
                    tier.for_,
                    tier.severity,
                    summary="The backlog of a CRM sync keeps growing towards its limit.",
                    description=(
                        f"The backlog of {self.where()} keeps growing: at the trend of the "
                        f"last {self.d(c.backlog_window)} it reaches {{{{ $value | humanize }}}} "
                        f"waiting changes within {self.d(tier.limit)}, past the limit of "
                        f"{c.backlog_limit}."
                    ),
                    dashboard_url=self.object_dashboard(),
                    keep_firing=True,
                )
            )
        return rules

    def freshness_alerts(self) -> list[Rule]:
        age = self.held("max", "crmsync_oldest_pending_age_seconds")
        rules = []
        for tier in self.c.freshness_tiers:
            limit = tier.limit
            rules.append(
                self.alert(
                    "CrmSyncOldestPendingTooOld",
                    f"{age} > {self.secs(limit)}\n{self.store_read()}",
                    tier.for_,
                    tier.severity,
                    summary="A change waits longer than the sync freshness objective.",
                    description=(
                        f"The oldest of the {self.where()} waiting to be synced has waited "
                        f"{{{{ $value | humanizeDuration }}}}, longer than {self.d(limit)}."
                    ),
                    dashboard_url=self.object_dashboard(),
                    keep_firing=True,
                )
            )
        return rules

    def stall_alert(self) -> Rule:
        c = self.c
        window = c.stall_window
        attempts = self.attempts(window)
        synced = self.increase("crmsync_records_synced_total", window)
        growth = f"sum by ({BY}) (delta({self.sel('crmsync_pending_records')}[{self.d(window)}]))"
        # The engine's work (synced changes and failed attempts) against the changes that
        # arrived (synced ones plus the backlog's growth): none in a full stall, a trickle in
        # a near-stall. A record retried at night is work: the engine is alive.
        expr = (
            f"{self.held('max', 'crmsync_oldest_pending_age_seconds')} > {self.secs(window)}\n"
            f"unless on ({BY})\n"
            f"(\n"
            f"  {attempts}\n"
            f"  > {num(c.stall_max_work_share)} * (\n"
            f"    {growth}\n"
            f"    + ({synced} or 0 * {growth})\n"
            f"  )\n"
            f")\n"
            f"{self.store_read()}"
        )
        return self.alert(
            "CrmSyncStalled",
            expr,
            c.stall_for,
            "critical",
            summary="A CRM sync has stalled: changes wait and (almost) none is synced.",
            description=(
                f"The sync of {self.where()} has stalled: in the last {self.d(window)} the "
                f"engine attempted at most {percent(c.stall_max_work_share)} as many changes "
                "as arrived, and the oldest waiting one has waited "
                "{{ $value | humanizeDuration }}."
            ),
            dashboard_url=self.object_dashboard(),
            keep_firing=True,
        )

    def error_ratio_alerts(self) -> list[Rule]:
        c = self.c
        window = c.error_ratio_window
        errors = self.increase("crmsync_sync_errors_total", window)
        attempts = self.attempts(window)
        rules = []
        for tier in c.error_ratio_tiers:
            expr = (
                f"{errors}\n"
                f"/\n"
                f"{attempts}\n"
                f"> {num(tier.ratio)}\n"
                f"and on ({BY})\n"
                f"{attempts} >= {c.error_ratio_min_attempts}\n"
                f"and on ({BY})\n"
                f"{errors} >= {c.error_ratio_min_errors}\n"
                f"{self.store_read()}"
            )
            rules.append(
                self.alert(
                    "CrmSyncErrorRatioHigh",
                    expr,
                    tier.for_,
                    tier.severity,
                    summary="Many attempts to sync changes fail.",
                    description=(
                        f"{{{{ $value | humanizePercentage }}}} of the attempts to sync "
                        f"{self.where()} failed in the last {self.d(window)} "
                        f"(threshold {percent(tier.ratio)})."
                    ),
                    dashboard_url=self.dashboard("crmsync-errors", "store", "object"),
                    keep_firing=True,
                )
            )
        return rules

    def error_code_alert(self) -> Rule:
        c = self.c
        errors = self.sel("crmsync_sync_errors_total")
        window, baseline = self.d(c.error_code_window), self.d(c.error_code_baseline)
        by_code = f"{BY}, error_code"

        def share(rng: Duration, offset: str = "") -> str:
            increase = f"increase({errors}[{rng}]{offset})"
            return (
                f"(\n"
                f"  sum by ({by_code}) ({increase})\n"
                f"  / on ({BY}) group_left ()\n"
                f"  sum by ({BY}) ({increase})\n"
                f")"
            )

        expr = (
            f"{share(window)} > {num(c.error_code_dominant_share)}\n"
            f"and on ({by_code})\n"
            f"sum by ({by_code}) (increase({errors}[{window}])) >= {c.error_code_min_errors}\n"
            f"unless on ({by_code})\n"
            f"{share(baseline, f' offset {window}')} >= {num(c.error_code_rare_share)}\n"
            f"{self.store_read()}"
        )
        return self.alert(
            "CrmSyncErrorCodeDominant",
            expr,
            c.error_code_for,
            "warning",
            summary="An error code that was rare now makes up most sync failures.",
            description=(
                "Error code {{ $labels.error_code }} makes up {{ $value | humanizePercentage }} "
                f"of the failed attempts to sync {self.where()} in the last {window}; in the "
                f"{baseline} before, it made up less than {percent(c.error_code_rare_share)}."
            ),
            dashboard_url=self.dashboard("crmsync-errors", "store", "object", "error_code"),
            keep_firing=True,
        )

    def burn_rate_alerts(self) -> list[Rule]:
        c = self.c
        threshold = self.d(c.latency_threshold)
        budget = f"(1 - {num(c.latency_target)})"
        rules = []
        for burn in c.burn_rates:
            long = self.recorded("crmsync_sync_latency_within_objective", "ratio_rate", burn.long)
            short = self.recorded("crmsync_sync_latency_within_objective", "ratio_rate", burn.short)
            limit = f"({num(burn.factor)} * {budget})"
            synced = self.increase("crmsync_sync_latency_seconds_count", burn.long)
            expr = (
                f"(1 - {long}) > {limit}\n"
                f"and on ({BY})\n"
                f"(1 - {short}) > {limit}\n"
                f"and on ({BY})\n"
                f"{synced} >= {c.latency_min_changes}\n"
                f"{self.store_read()}"
            )
            budget_spent = Duration(round(SLO_PERIOD.ms / burn.factor / 60_000) * 60_000)
            rules.append(
                self.alert(
                    "CrmSyncLatencyBudgetBurn",
                    expr,
                    burn.for_,
                    burn.severity,
                    summary="Changes take too long to sync: the latency error budget burns.",
                    description=(
                        f"{{{{ $value | humanizePercentage }}}} of the {self.where()} synced in "
                        f"the last {self.d(burn.long)} took longer than {threshold}; the "
                        f"objective allows {percent(1 - c.latency_target)}. At this rate the "
                        f"error budget of {SLO_PERIOD} is spent in {budget_spent}."
                    ),
                    dashboard_url=self.object_dashboard(),
                    extra_labels={"long": str(burn.long), "short": str(burn.short)},
                    keep_firing=True,
                )
            )
        return rules

    def exporter_alerts(self) -> list[Rule]:
        c = self.c
        status_store = self.dashboard("crmsync-status", "store")
        up = f"last_over_time({self.sel('crmsync_up')}[{self.d(c.gap_tolerance)}])"
        return [
            self.alert(
                "CrmSyncStoreDown",
                f"{up} == 0",
                c.store_down_for,
                "critical",
                summary="The exporter cannot read a CRM sync store.",
                description=(
                    "The exporter {{ $labels.instance }} cannot read store {{ $labels.store }}: "
                    "its backlog, errors and throughput are unknown while this lasts."
                ),
                dashboard_url=status_store,
            ),
            self.alert(
                "CrmSyncExporterDown",
                f"{self.sel('up')} == 0",
                c.exporter_down_for,
                "critical",
                summary="Prometheus cannot scrape the crmsync exporter.",
                description=(
                    "Prometheus cannot scrape the crmsync exporter {{ $labels.instance }}: "
                    "the CRM sync of its stores is not monitored."
                ),
                dashboard_url=self.dashboard("crmsync-status"),
            ),
            self.alert(
                "CrmSyncExporterAbsent",
                f"absent({self.sel('up')})",
                c.exporter_absent_for,
                "critical",
                summary="No crmsync exporter is scraped.",
                description=(
                    f"Prometheus has no target matching {{{c.selector}}}: "
                    "no CRM sync store is monitored."
                ),
                dashboard_url=self.dashboard("crmsync-status"),
            ),
        ]

    def exporter_health_alerts(self) -> list[Rule]:
        c = self.c
        status_store = self.dashboard("crmsync-status", "store")
        failures = "crmsync_collection_failures_total"
        window = c.collection_failures_window
        return [
            self.alert(
                "CrmSyncCollectionsFailing",
                f"{self.increase(failures, window, 'store')}\n"
                f"/\n"
                f"{self.increase('crmsync_collections_total', window, 'store')}\n"
                f"> {num(c.collection_failures_share)}\n"
                # still failing now and then: after an outage, CrmSyncStoreDown said it all
                f"and on (store)\n"
                f"{self.increase(failures, c.collection_failures_recent, 'store')} > 0\n"
                f"{self.store_read()}",
                c.collection_failures_for,
                "warning",
                summary="Many collections from a CRM sync store fail.",
                description=(
                    "{{ $value | humanizePercentage }} of the collections from store "
                    f"{{{{ $labels.store }}}} failed in the last {self.d(window)} (threshold "
                    f"{percent(c.collection_failures_share)}): its numbers come in late "
                    "and its gauges are missing now and then."
                ),
                dashboard_url=status_store,
            ),
            self.alert(
                "CrmSyncFutureTimestamps",
                f"{self.held('max', 'crmsync_future_timestamp_rows', 'store, table')} > 0",
                c.future_timestamps_for,
                "warning",
                summary="Rows of a CRM sync store are stamped in the future.",
                description=(
                    "{{ $value | humanize }} rows of the {{ $labels.table }} table of store "
                    "{{ $labels.store }} are stamped later than the database's clock: their "
                    "ages and latencies read 0."
                ),
                dashboard_url=status_store,
            ),
            self.alert(
                "CrmSyncLabelValuesFolded",
                f"{self.held('max', 'crmsync_folded_label_values', 'store, label')} > 0",
                c.folded_label_values_for,
                "warning",
                summary="Values of a CRM sync store are reported as other.",
                description=(
                    "{{ $value | humanize }} distinct {{ $labels.label }} values of store "
                    '{{ $labels.store }} are reported as "other": over their cap or '
                    "outside the configured mapping."
                ),
                dashboard_url=status_store,
            ),
            self.alert(
                "CrmSyncOpenIdGaps",
                f"{self.held('max', 'crmsync_open_id_gaps', 'store')} > {c.open_id_gaps_limit}",
                c.open_id_gaps_for,
                "warning",
                summary="The exporter watches many id gaps of a CRM sync store.",
                description=(
                    "The exporter watches {{ $value | humanize }} id gaps of store "
                    "{{ $labels.store }} for late commits (more than "
                    f"{c.open_id_gaps_limit}); past 10000 per table it forgets the oldest, "
                    "and rows committed into them go uncounted."
                ),
                dashboard_url=status_store,
            ),
        ]

    def alerting_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "crmsync-backlog",
                "rules": [*self.backlog_alerts(), *self.freshness_alerts(), self.stall_alert()],
            },
            {
                "name": "crmsync-errors",
                "rules": [*self.error_ratio_alerts(), self.error_code_alert()],
            },
            {"name": "crmsync-latency", "rules": self.burn_rate_alerts()},
            {"name": "crmsync-exporter", "rules": self.exporter_alerts()},
            {"name": "crmsync-exporter-health", "rules": self.exporter_health_alerts()},
        ]


# --- output ---------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line expressions, lists indented like the rest."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(groups: Sequence[Mapping[str, Any]], what: str, scale: int) -> str:
    header = [
        f"# {what} of the crmsync alert pack.",
        "# Generated by crmsync-alerts from alerts/config.yaml: edit those, not this file.",
    ]
    if scale != 1:
        header.append(f"# Every duration divided by {scale}, for tests only.")
    body = yaml.dump(
        {"groups": list(groups)},
        Dumper=_Dumper,
        sort_keys=False,
        width=4096,
        allow_unicode=True,
        default_flow_style=False,
    )
    return "\n".join(header) + "\n" + body


def generate(config: Config, scale: int = 1) -> dict[str, str]:
    builder = Builder(config, scale)
    scaled_threshold = builder.d(config.latency_threshold)
    if scaled_threshold.ms % 1000 or scaled_threshold.ms // 1000 not in LATENCY_BUCKETS_SECONDS:
        raise ConfigError(
            f"latency_slo.threshold: {config.latency_threshold} / {scale} = {scaled_threshold} "
            "is no histogram bucket: choose another scale"
        )
    return {
        RECORDING_FILE: render(builder.recording_groups(), "Recording rules", scale),
        ALERTING_FILE: render(builder.alerting_groups(), "Alerting rules", scale),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("crmsync-alerts", __doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration")
    parser.add_argument(
        "--output-dir", type=Path, default=ALERTS_DIR, help="where to write the rules"
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the written rules are current"
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        metavar="N",
        help="divide every duration by N (for end-to-end tests; needs --output-dir)",
    )
    args = parser.parse_args(argv)
    setup_logging_from(args)
    if args.scale < 1:
        parser.error("--scale must be a positive whole number")
    if args.scale != 1 and args.output_dir.resolve() == args.config.resolve().parent:
        parser.error("--scale writes test rules: give another --output-dir")

    try:
        config = load_config(args.config)
        files = generate(config, args.scale)
    except (ConfigError, OSError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2

    if args.check:
        return check_generated(args.output_dir, files, "crmsync-alerts")
    write_generated(args.output_dir, files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
