"""The set-of-marks overlay for the web format (`Click [N]`, `Type [N]; [text]`).

`draw(page)` finds the interactive elements that are actually visible in the viewport
(non-empty box intersecting the viewport, not hidden, and on top at their centre or at one of
their corners, so a modal hides what it covers), numbers them 0, 1, 2, ... in document
order, draws a box and a label for each in one fixed, `pointer-events: none` layer, and
returns their boxes in CSS pixels. `erase(page)` removes the layer. `BrowserEnv.observe`
draws, takes the screenshot, and erases before returning, so the overlay is never in the DOM
while an action executes.

Only the top document is marked (not iframes or closed shadow roots); open shadow roots are.
"""

from __future__ import annotations

from typing import Any

from agent.actions import MODEL_SPACE, Box

LAYER_ID = "__agent_set_of_marks__"

INTERACTIVE = ", ".join([
    "a[href]", "button", "input:not([type=hidden])", "select", "textarea", "summary", "label[for]",
    "[role=button]", "[role=link]", "[role=checkbox]", "[role=radio]", "[role=tab]", "[role=menuitem]",
    "[role=option]", "[role=switch]", "[role=textbox]", "[role=combobox]", "[onclick]",
    "[contenteditable=''], [contenteditable=true]", "[tabindex]:not([tabindex='-1'])",
])

_DRAW_JS = """([layerId, selector]) => {
  document.getElementById(layerId)?.remove();
  // bounds in layout (client) CSS px of what is on screen; on a zoomed-out phone page the
  // visual viewport is wider than the screen, and boxes are returned in screen CSS px
  const vv = window.visualViewport || {offsetLeft: 0, offsetTop: 0, width: innerWidth, height: innerHeight, scale: 1};
  const left = vv.offsetLeft, top = vv.offsetTop, vw = left + vv.width, vh = top + vv.height;
  const found = [];
  const collect = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.matches(selector)) found.push(el);
      if (el.shadowRoot) collect(el.shadowRoot);
    }
  };
  collect(document);
  const onTop = (el, x, y) => {
    if (x < left || y < top || x >= vw || y >= vh) return false;
    let hit = document.elementFromPoint(x, y);
    while (hit && hit.shadowRoot) {
      const inner = hit.shadowRoot.elementFromPoint(x, y);
      if (!inner || inner === hit) break;
      hit = inner;
    }
    return !!hit && (hit === el || el.contains(hit) || (hit.getRootNode().host && el.contains(hit.getRootNode().host)));
  };
  const marks = [];
  for (const el of found) {
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) continue;
    if (r.right <= left || r.bottom <= top || r.left >= vw || r.top >= vh) continue;
    const style = getComputedStyle(el);
    if (style.visibility !== 'visible' || style.display === 'none' || Number(style.opacity) === 0) continue;
    const x1 = Math.max(left, r.left), y1 = Math.max(top, r.top), x2 = Math.min(vw, r.right), y2 = Math.min(vh, r.bottom);
    const points = [[(x1 + x2) / 2, (y1 + y2) / 2], [x1 + 1, y1 + 1], [x2 - 1, y1 + 1], [x1 + 1, y2 - 1], [x2 - 1, y2 - 1]];
    if (!points.some(([x, y]) => onTop(el, x, y))) continue;
    // a label inside an already-marked control (e.g. <button><span role=button>) adds nothing
    if (marks.some(m => m.el.contains(el) && m.el !== el && el.matches('[role], [tabindex], [onclick]'))) continue;
    marks.push({el, box: [x1, y1, x2, y2]});
  }
  const layer = document.createElement('div');
  layer.id = layerId;
  layer.style.cssText = 'position:fixed;left:0;top:0;width:0;height:0;pointer-events:none;z-index:2147483647;';
  const colours = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000'];
  marks.forEach((m, i) => {
    const [x1, y1, x2, y2] = m.box, colour = colours[i % colours.length];
    const outline = document.createElement('div');
    outline.style.cssText = `position:fixed;left:${x1}px;top:${y1}px;width:${x2 - x1}px;height:${y2 - y1}px;` +
      `outline:2px solid ${colour};outline-offset:-2px;pointer-events:none;box-sizing:border-box;`;
    const label = document.createElement('div');
    label.textContent = String(i);
    const px = 11 / vv.scale;  // readable on screen even when the page is zoomed out
    label.style.cssText = `position:fixed;left:${x1}px;top:${Math.max(top, y1 - 1.3 * px)}px;` +
      `background:${colour};color:#fff;font:bold ${px}px/${1.3 * px}px monospace;padding:0 3px;pointer-events:none;`;
    layer.append(outline, label);
  });
  document.documentElement.appendChild(layer);
  return marks.map(({box: [x1, y1, x2, y2]}) =>
    [(x1 - left) * vv.scale, (y1 - top) * vv.scale, (x2 - left) * vv.scale, (y2 - top) * vv.scale]);
}"""

_ERASE_JS = "(layerId) => { document.getElementById(layerId)?.remove(); }"


def draw(page: Any) -> list[tuple[float, float, float, float]]:
    """Draw numbered marks; return each mark's (x1, y1, x2, y2) in screen CSS pixels (the
    screenshot's), by number."""
    return [tuple(box) for box in page.evaluate(_DRAW_JS, [LAYER_ID, INTERACTIVE])]


def erase(page: Any) -> None:
    page.evaluate(_ERASE_JS, LAYER_ID)


def to_model_space(box: tuple[float, float, float, float], width: float, height: float) -> Box:
    """A CSS-pixel box in a `width` x `height` viewport as a 0-999 model-space `Box`."""
    def scale(value: float, size: float) -> int:
        return min(MODEL_SPACE - 1, max(0, int(value * MODEL_SPACE / size)))

    x1, y1, x2, y2 = box
    # the right / bottom edge is exclusive in CSS, inclusive in `Box`
    return Box(scale(x1, width), scale(y1, height),
               max(scale(x1, width), scale(x2 - 0.001, width)), max(scale(y1, height), scale(y2 - 0.001, height)))
