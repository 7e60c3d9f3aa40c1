"""Shared fixtures for the data-engine tests: one Chromium for the whole test session."""

from __future__ import annotations

import pytest

from train.render import Renderer


@pytest.fixture(scope="session")
def renderer():
    with Renderer() as r:
        yield r
