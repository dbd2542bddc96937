"""crmsync-exporter: Prometheus metrics for a CRM synchronisation store."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crmsync-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
