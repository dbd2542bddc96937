"""Fixtures of the alert pack's tests."""

from __future__ import annotations

import pytest

from crmsync_testing.alerting import RequireBinary, find_binary


@pytest.fixture
def require_binary() -> RequireBinary:
    """Find a program on PATH: skip the test without it, or fail it when CI=true."""
    return find_binary
