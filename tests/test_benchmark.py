"""The overhead benchmark runs real steps in Chromium and reports per-stage timings."""

import pytest

from benchmarks.agent_step import measure

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.parametrize("platform", ["desktop", "web"])
def test_benchmark_executes_every_step_and_times_the_stages(platform):
    result = measure(platform=platform, steps=6, viewport=(640, 360))
    assert result.steps == 5 and result.executed == 5
    assert set(result.stage_medians_ms) == {"observe", "prompt", "parse", "bookkeeping", "safety", "execute", "encode"}
    assert 0 < result.median_ms <= result.p90_ms
    assert result.median_ms >= result.stage_medians_ms["observe"]  # the total includes the screenshot
