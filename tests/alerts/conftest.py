"""Fixtures of the alert pack's tests: the Prometheus and Alertmanager programs they run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

RequireBinary = Callable[[str], str]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def require_binary() -> RequireBinary:
    """Find a program on PATH: skip the test without it, or fail it when CI=true."""

    def require(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            reason = (
                f"{name} is not installed "
                "(Debian: apt-get install prometheus prometheus-alertmanager)"
            )
            if _in_ci():
                pytest.fail(f"{reason}; CI=true requires it")
            pytest.skip(reason)
        return path

    return require
