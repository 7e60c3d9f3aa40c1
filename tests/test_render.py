"""The renderer's boxes are where the browser delivers clicks and taps (a real Chromium)."""

import pytest

from synth.pages import generate_page
from synth.render import to_model_box
from tests._data_engine_utils import renderer  # noqa: F401  (fixture)

# Record which tagged element each click reaches, and stop the page from reacting to it,
# so one load serves every element.
_RECORD_CLICKS = """() => {
  window.__hits = [];
  document.addEventListener('click', e => {
    const el = e.target.closest('[data-el]'); window.__hits.push(el ? el.dataset.el : null);
    e.preventDefault(); e.stopPropagation();
  }, true);
}"""


@pytest.mark.browser
@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_clicks_at_the_model_space_box_centre_land_on_the_element(renderer, viewport):  # noqa: F811
    for seed in range(4):
        page = generate_page(seed)
        tab = renderer.load(page, viewport)
        rendered = renderer.snapshot(tab, page, viewport)
        tab.evaluate(_RECORD_CLICKS)
        for placed in rendered.placed:
            # through model space, as the agent does it: 0-999 box centre -> CSS pixels
            x, y = placed.box.center.to_pixels(rendered.width, rendered.height)
            if viewport == "phone":
                tab.touchscreen.tap(x, y)
            else:
                tab.mouse.click(x, y)
        hits = tab.evaluate("window.__hits")
        assert hits == [p.element.id for p in rendered.placed], seed


def test_model_box_covers_the_pixel_box():
    box = to_model_box(10.0, 20.0, 138.0, 30.5, width=1280, height=720)
    assert (box.x1, box.y1, box.x2, box.y2) == (7, 27, 107, 42)
    full = to_model_box(0, 0, 390, 844, width=390, height=844)
    assert (full.x1, full.y1, full.x2, full.y2) == (0, 0, 999, 999)
    with pytest.raises(ValueError, match="outside the 100x100 screen"):
        to_model_box(50, 50, 120, 60, width=100, height=100)
