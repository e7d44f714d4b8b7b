"""Shared fixtures of the preprocessing tests."""

from __future__ import annotations

import pytest
from gcrl_fixtures import build_modular_screen


@pytest.fixture(scope="session")
def _modular_template():
    return build_modular_screen()


@pytest.fixture
def modular_screen(_modular_template):
    """A screen with planted TF modules, a reference GRN and TF communities; a fresh copy per test."""
    return _modular_template.copy()
