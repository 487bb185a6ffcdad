"""Shared fixtures (helpers live in tiny_helpers.py so test modules can import them by name)."""
from __future__ import annotations

from typing import Any, Dict

import pytest

from tiny_helpers import TINY_OVERRIDES, free_port, make_tiny_config  # noqa: F401  (re-exported)


@pytest.fixture
def tiny_config() -> Dict[str, Any]:
    return make_tiny_config()
