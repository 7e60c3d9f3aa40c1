"""Shared fixtures for the data-engine tests: one Chromium per test module (Playwright allows one sync instance per thread)."""

from __future__ import annotations

import pytest

from synth.render import Renderer


@pytest.fixture(scope="module")
def renderer():
    with Renderer() as r:
        yield r
