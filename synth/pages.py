"""Randomised but realistic web pages, built from UI blocks, deterministic per seed.

A page is a header (brand, nav links, search, an account menu) and a column of cards (login
and contact forms, toolbars, checkbox groups, tabs, lists, tables, menus, dropdowns), now
and then covered by a modal dialog, in one of several themes, fonts, sizes and languages.

Every element a task may refer to carries `data-el="eN"`, every card `data-block="bN"`; the
renderer reads boxes back from the DOM by those attributes. What *this* module knows is
only what the HTML says (roles, texts, states, effects); what is visible is the renderer's
business, because only a browser knows where text wraps. Descriptions and effects are in
English even on a German or Japanese page, quoting the visible text: the released model's
prompts are English and users refer to elements by what they read on screen.

The small script in every page makes menus, dropdowns, tabs and forms really work, so the
episode recorder (`synth.episodes`) can execute expert steps and check their outcome.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

from synth import vocab
from synth.vocab import Language, Row, word

Role = Literal["heading", "link", "button", "textbox", "checkbox", "tab", "menu", "menuitem",
               "dropdown", "option", "listitem", "cell", "text"]  # text: static text (synth.ui only)
BlockKind = Literal["header", "title", "login", "form", "toolbar", "checkboxes", "tabs", "list", "table",
                    "menu", "dropdown", "dialog"]
CARD_KINDS: tuple[BlockKind, ...] = ("login", "form", "toolbar", "checkboxes", "tabs", "list",
                                     "table", "menu", "dropdown")


@dataclass(frozen=True)
class Element:
    """One element a task can refer to.

    `text` is what the screen shows (a field's label, a checkbox's label); `description` is
    an English referring expression; `effect` says in English what clicking it does.
    """

    id: str
    role: Role
    text: str
    description: str
    block: str
    effect: str
    checked: bool | None = None  # checkboxes only


@dataclass(frozen=True)
class Block:
    """A card (or the header, or a dialog). `items` are the element ids a count refers to."""

    id: str
    kind: BlockKind
    title: str
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Theme:
    name: str
    background: str
    foreground: str
    card: str
    accent: str
    accent_text: str
    border: str


THEMES = (
    Theme("light", "#f5f6f8", "#1d2330", "#ffffff", "#2f6fed", "#ffffff", "#d5d9e0"),
    Theme("dark", "#16181d", "#e7e9ee", "#23262e", "#4f8cff", "#0b0d12", "#3a3f4b"),
    Theme("forest", "#eef3ee", "#1f2d22", "#fbfdfb", "#2e7d4f", "#ffffff", "#c3d6c8"),
    Theme("sunset", "#fff6ef", "#3a2318", "#ffffff", "#e0662f", "#ffffff", "#f0d2c0"),
    Theme("grape", "#f6f2fb", "#2a1f38", "#ffffff", "#7a3fd1", "#ffffff", "#dccdf0"),
    Theme("slate", "#2b3240", "#eef1f6", "#363f50", "#f2b134", "#1b1f27", "#4c566a"),
    Theme("mono", "#ffffff", "#111111", "#fafafa", "#111111", "#ffffff", "#cccccc"),
    Theme("ocean", "#eaf6fb", "#10303d", "#ffffff", "#0f8fb8", "#ffffff", "#bfe0ec"),
)
LATIN_FONTS = ("DejaVu Sans", "Liberation Sans", "Liberation Serif", "DejaVu Serif", "Liberation Mono")
CJK_FONTS = {"zh": ("Noto Sans CJK SC", "Noto Serif CJK SC"), "ja": ("Noto Sans CJK JP", "Noto Serif CJK JP")}


@dataclass(frozen=True)
class Page:
    seed: int
    html: str
    title: str
    site: str  # the brand in the header; also names the page's pretend URL
    language: Language
    theme: str
    font: str
    elements: tuple[Element, ...]
    blocks: tuple[Block, ...]

    @property
    def url(self) -> str:
        """Where the page pretends to live (it is loaded with `set_content`, at about:blank)."""
        return f"https://www.{self.site.lower()}.com/p/{self.seed}"

    def element(self, element_id: str) -> Element:
        for element in self.elements:
            if element.id == element_id:
                return element
        raise KeyError(f"page {self.seed} has no element {element_id!r}")


@dataclass
class _Builder:
    """Collects elements and blocks while the HTML is written; hands out unused words."""

    rng: random.Random
    language: Language
    elements: list[Element] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    _used: set[tuple[int, int]] = field(default_factory=set)

    def rows(self, table: list[Row], n: int) -> list[Row]:
        """`n` rows of `table` not used elsewhere on this page, so descriptions stay unique."""
        free = [i for i in range(len(table)) if (id(table), i) not in self._used]
        chosen = self.rng.sample(free, min(n, len(free)))
        self._used.update((id(table), i) for i in chosen)
        return [table[i] for i in chosen]

    def word(self, row: Row) -> str:
        return html.escape(word(row, self.language))

    def block(self, kind: BlockKind, title: str) -> str:
        self.blocks.append(Block(f"b{len(self.blocks)}", kind, title))
        return self.blocks[-1].id

    def set_items(self, block_id: str, items: list[str]) -> None:
        self.blocks = [Block(b.id, b.kind, b.title, tuple(items)) if b.id == block_id else b
                       for b in self.blocks]

    def el(self, role: Role, text: str, description: str, effect: str, *, checked: bool | None = None) -> str:
        """Register an element; returns the attribute that tags it in the HTML."""
        element_id = f"e{len(self.elements)}"
        self.elements.append(Element(element_id, role, text, description, self.blocks[-1].id, effect, checked))
        return f'data-el="{element_id}"'


def _q(text: str) -> str:
    return f'"{text}"'


def _header(b: _Builder, site: str) -> str:
    b.block("header", site)
    links = "".join(
        f'<a href="#" {b.el("link", word(r, b.language), f"the {_q(word(r, b.language))} link in the navigation bar", f"It opens the {_q(word(r, b.language))} page.")}>{b.word(r)}</a>'
        for r in b.rows(vocab.NAV, b.rng.randint(2, 5)))
    search = ""
    if b.rng.random() < 0.5:
        label = word(vocab.COMMON["search"], b.language)
        search = (f'<input class="search" type="search" placeholder="{html.escape(label)}…" '
                  f'{b.el("textbox", label, "the search box", "It focuses the search box so you can type a query.")}>')
    return f'<header data-block="{b.blocks[-1].id}"><span class="brand">{html.escape(site)}</span><nav>{links}</nav>{search}</header>'


def _login(b: _Builder) -> str:
    c = vocab.COMMON
    title = word(c["sign_in"], b.language)
    bid = b.block("login", title)
    user, pw = word(c["username"], b.language), word(c["password"], b.language)
    remember = b.rows(vocab.CHECKBOXES, 1)
    box = ""
    if remember:
        text = word(remember[0], b.language)
        box = (f'<label><input type="checkbox" name="remember" {b.el("checkbox", text, f"the {_q(text)} checkbox", f"It checks the {_q(text)} checkbox.", checked=False)}> {html.escape(text)}</label>')
    return (f'<form class="card" data-block="{bid}" data-kind="login"><h2>{html.escape(title)}</h2>'
            f'<label>{html.escape(user)}<input name="username" {b.el("textbox", user, f"the {_q(user)} input field", f"It focuses the {_q(user)} field so you can type in it.")}></label>'
            f'<label>{html.escape(pw)}<input name="password" type="password" {b.el("textbox", pw, f"the {_q(pw)} input field", f"It focuses the {_q(pw)} field so you can type in it.")}></label>'
            f'{box}<button type="submit" class="primary" {b.el("button", title, f"the {_q(title)} button", "It signs in with the entered username and password.")}>{html.escape(title)}</button></form>')


def _form(b: _Builder) -> str:
    title = word(b.rows(vocab.TITLES, 1)[0], b.language)
    bid = b.block("form", title)
    fields = "".join(
        f'<label>{b.word(r)}<input name="{html.escape(r[0].lower().replace(" ", "_"))}" {b.el("textbox", word(r, b.language), f"the {_q(word(r, b.language))} input field", f"It focuses the {_q(word(r, b.language))} field so you can type in it.")}></label>'
        for r in b.rows(vocab.FIELDS, b.rng.randint(2, 4)))
    submit = word(vocab.COMMON["submit"], b.language)
    return (f'<form class="card" data-block="{bid}" data-kind="form"><h2>{html.escape(title)}</h2>{fields}'
            f'<button type="submit" class="primary" {b.el("button", submit, f"the {_q(submit)} button", f"It submits the {_q(title)} form.")}>{html.escape(submit)}</button></form>')


def _toolbar(b: _Builder) -> str:
    bid = b.block("toolbar", "toolbar")
    buttons = "".join(
        f'<button type="button" {b.el("button", word(r, b.language), f"the {_q(word(r, b.language))} button", f"It runs the {r[0].lower()} action.")}>{b.word(r)}</button>'
        for r in b.rows(vocab.BUTTONS, b.rng.randint(2, 5)))
    return f'<div class="card toolbar" data-block="{bid}">{buttons}</div>'


def _checkboxes(b: _Builder) -> str:
    bid = b.block("checkboxes", word(vocab.TABS[3], b.language))
    parts = []
    for r in b.rows(vocab.CHECKBOXES, b.rng.randint(2, 4)):
        text, on = word(r, b.language), b.rng.random() < 0.5
        verb = "unchecks" if on else "checks"
        attr = b.el("checkbox", text, f"the {_q(text)} checkbox", f"It {verb} the {_q(text)} checkbox.", checked=on)
        parts.append(f'<label><input type="checkbox" {"checked " if on else ""}{attr}> {html.escape(text)}</label>')
    return f'<div class="card stack" data-block="{bid}"><h2>{html.escape(b.blocks[-1].title)}</h2>{"".join(parts)}</div>'


def _tabs(b: _Builder) -> str:
    bid = b.block("tabs", "tabs")
    rows = b.rows(vocab.TABS, b.rng.randint(2, 4))
    active = b.rng.randrange(len(rows))
    tabs = "".join(
        f'<button type="button" role="tab" class="tab{" active" if i == active else ""}" {b.el("tab", word(r, b.language), f"the {_q(word(r, b.language))} tab", f"It switches to the {_q(word(r, b.language))} tab.")}>{b.word(r)}</button>'
        for i, r in enumerate(rows))
    body = html.escape(b.rng.choice(vocab.PEOPLE)) + " · " + html.escape(b.rng.choice(vocab.CITIES))
    return f'<div class="card" data-block="{bid}"><div class="tabs">{tabs}</div><p class="tabbody">{body}</p></div>'


def _list(b: _Builder) -> str:
    title = word(b.rows(vocab.LIST_TITLES, 1)[0], b.language)
    bid = b.block("list", title)
    items = [(word(r, b.language), b.el("listitem", word(r, b.language), f"the list item {_q(word(r, b.language))}", f"It opens the item {_q(word(r, b.language))}."))
             for r in b.rows(vocab.LIST_ITEMS, b.rng.randint(2, 5))]
    b.set_items(bid, [attr.split('"')[1] for _, attr in items])
    lis = "".join(f"<li {attr}>{html.escape(text)}</li>" for text, attr in items)
    return f'<div class="card" data-block="{bid}"><h2>{html.escape(title)}</h2><ul>{lis}</ul></div>'


def _table(b: _Builder) -> str:
    bid = b.block("table", "table")
    head = "".join(f"<th>{b.word(r)}</th>" for r in vocab.TABLE_HEADERS)
    rows, ids = [], []
    for person in b.rng.sample(vocab.PEOPLE, b.rng.randint(2, 4)):
        attr = b.el("cell", person, f"the table cell {_q(person)}", f"It selects the row of {_q(person)}.")
        ids.append(attr.split('"')[1])
        status, amount = b.word(b.rng.choice(vocab.STATUSES)), f"{b.rng.randint(5, 990)}.{b.rng.randint(0, 99):02d}"
        rows.append(f"<tr><td {attr}>{html.escape(person)}</td><td>{status}</td><td>{amount}</td></tr>")
    b.set_items(bid, ids)
    return f'<div class="card" data-block="{bid}"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _menu(b: _Builder) -> str:
    label = word(b.rows(vocab.MENU_BUTTONS, 1)[0], b.language)
    bid = b.block("menu", label)
    opened = b.rng.random() < 0.4
    button = b.el("menu", label, f"the {_q(label)} menu button", f"It {'closes' if opened else 'opens'} the {_q(label)} menu.")
    items = "".join(
        f'<button type="button" class="menuitem" {b.el("menuitem", word(r, b.language), f"the {_q(word(r, b.language))} menu item", f"It chooses {_q(word(r, b.language))} from the {_q(label)} menu.")}>{b.word(r)}</button>'
        for r in b.rows(vocab.MENU_ITEMS, b.rng.randint(2, 4)))
    status = '<p class="status" data-status></p>'
    return (f'<div class="card menuwrap" data-block="{bid}"><button type="button" class="menubutton" aria-expanded="{str(opened).lower()}" {button}>{html.escape(label)} ▾</button>'
            f'<div class="menu"{"" if opened else " hidden"}>{items}</div>{status}</div>')


def _dropdown(b: _Builder) -> str:
    row_index = b.rng.randrange(len(vocab.DROPDOWNS))
    label = word(vocab.DROPDOWNS[row_index], b.language)
    bid = b.block("dropdown", label)
    options = b.rng.sample(vocab.OPTIONS[row_index], b.rng.randint(3, 5))
    opened = b.rng.random() < 0.4
    button = b.el("dropdown", options[0], f"the {_q(label)} dropdown", f"It {'closes' if opened else 'opens'} the {_q(label)} dropdown list.")
    opts = "".join(f'<button type="button" class="option" {b.el("option", o, f"the option {_q(o)}", f"It selects {_q(o)} in the {_q(label)} dropdown.")}>{html.escape(o)}</button>' for o in options)
    return (f'<div class="card menuwrap" data-block="{bid}"><span>{html.escape(label)}</span> '
            f'<button type="button" class="menubutton select" aria-expanded="{str(opened).lower()}" {button}>{html.escape(options[0])} ▾</button>'
            f'<div class="menu"{"" if opened else " hidden"}>{opts}</div></div>')


def _dialog(b: _Builder) -> str:
    title = word(b.rng.choice(vocab.DIALOGS), b.language)
    bid = b.block("dialog", title)
    ok, cancel = word(vocab.COMMON["confirm"], b.language), word(vocab.COMMON["cancel"], b.language)
    return (f'<div class="backdrop"><div class="card dialog" role="dialog" data-block="{bid}"><h2>{html.escape(title)}</h2>'
            f'<button type="button" class="primary" {b.el("button", ok, f"the {_q(ok)} button in the dialog", f"It confirms {_q(title)} and closes the dialog.")}>{html.escape(ok)}</button> '
            f'<button type="button" {b.el("button", cancel, f"the {_q(cancel)} button in the dialog", "It closes the dialog without changes.")}>{html.escape(cancel)}</button></div></div>')


_CARDS: dict[BlockKind, Callable[[_Builder], str]] = {
    "login": _login, "form": _form, "toolbar": _toolbar, "checkboxes": _checkboxes, "tabs": _tabs,
    "list": _list, "table": _table, "menu": _menu, "dropdown": _dropdown}


def generate_page(seed: int, *, cards: tuple[BlockKind, ...] | None = None,
                  language: Language | None = None, dialog: bool | None = None) -> Page:
    """The page for `seed`. `cards`, `language` and `dialog` pin what is otherwise random."""
    rng = random.Random(seed)
    language = language or rng.choice(vocab.LANGUAGES)
    if language not in vocab.LANGUAGES:
        raise ValueError(f"language {language!r} is not one of {vocab.LANGUAGES}")
    if cards is None:
        cards = tuple(rng.sample(CARD_KINDS, rng.randint(2, 6)))  # the renderer drops what does not fit
    unknown = [c for c in cards if c not in _CARDS]
    if unknown:
        raise ValueError(f"card kinds {unknown} are not among {sorted(_CARDS)}")
    dialog = rng.random() < 0.08 if dialog is None else dialog
    theme = rng.choice(THEMES)
    font = rng.choice(CJK_FONTS.get(language, LATIN_FONTS))
    b = _Builder(rng, language)
    title = word(b.rows(vocab.TITLES, 1)[0], language)
    site = rng.choice(vocab.SITE_NAMES)
    header = _header(b, site)
    b.block("title", title)
    heading = f'<h1 data-block="{b.blocks[-1].id}" {b.el("heading", title, "the page title", "Nothing happens: it is the page title.")}>{html.escape(title)}</h1>'
    body = "".join(_CARDS[kind](b) for kind in cards)
    body += _dialog(b) if dialog else ""
    css = _css(theme, font, font_px=rng.randint(13, 18), radius_px=rng.choice((0, 4, 8, 14)),
               pad_px=rng.randint(6, 14))
    doc = (f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f'<title>{html.escape(title)}</title><style>{css}</style></head>'
           f'<body>{header}<main>{heading}{body}</main><script>{_SCRIPT}</script></body></html>')
    return Page(seed, doc, title, site, language, theme.name, font, tuple(b.elements), tuple(b.blocks))


def _css(t: Theme, font: str, *, font_px: int, radius_px: int, pad_px: int) -> str:
    return f"""
*{{box-sizing:border-box;-webkit-tap-highlight-color:transparent}}
body{{margin:0;background:{t.background};color:{t.foreground};font:{font_px}px '{font}',sans-serif}}
header{{display:flex;flex-wrap:wrap;align-items:center;gap:{pad_px}px 18px;padding:{pad_px}px 16px;background:{t.card};border-bottom:1px solid {t.border}}}
.brand{{font-weight:bold;font-size:1.2em;color:{t.accent}}}
nav{{display:flex;flex-wrap:wrap;gap:14px}} nav a{{color:{t.foreground};text-decoration:none}}
main{{display:flex;flex-wrap:wrap;align-items:flex-start;gap:{pad_px + 4}px;padding:{pad_px}px 16px}}
h1{{flex-basis:100%;margin:4px 0;font-size:1.6em}} h2{{margin:0 0 6px;font-size:1.1em}}
.card{{background:{t.card};border:1px solid {t.border};border-radius:{radius_px}px;padding:{pad_px}px;max-width:100%}}
form.card,.stack{{display:flex;flex-direction:column;gap:6px}} label{{display:flex;flex-direction:column;gap:2px}}
label:has(input[type=checkbox]){{flex-direction:row;align-items:center}}
input{{font:inherit;padding:4px 6px;border:1px solid {t.border};border-radius:{min(radius_px, 6)}px;background:{t.background};color:{t.foreground}}}
input[type=checkbox]{{width:18px;height:18px;margin:0 6px 0 0;accent-color:{t.accent}}}
button{{font:inherit;padding:{pad_px // 2 + 2}px {pad_px + 2}px;border:1px solid {t.border};border-radius:{radius_px}px;background:{t.card};color:{t.foreground};cursor:pointer}}
button.primary{{background:{t.accent};color:{t.accent_text};border-color:{t.accent}}}
.toolbar{{display:flex;flex-wrap:wrap;gap:6px}} .tabs{{display:flex;gap:2px;border-bottom:2px solid {t.border}}}
.tab{{border:none;border-radius:0;background:none}} .tab.active{{border-bottom:3px solid {t.accent};font-weight:bold}}
ul{{margin:0;padding-left:20px}} li{{padding:2px 0}} table{{border-collapse:collapse}} th,td{{padding:3px 8px;border-bottom:1px solid {t.border};text-align:left}}
.menuwrap{{position:relative}} .menu{{position:absolute;z-index:5;display:flex;flex-direction:column;background:{t.card};border:1px solid {t.border};box-shadow:0 4px 12px rgba(0,0,0,.25);min-width:140px}}
.menu[hidden]{{display:none}} .menuitem,.option{{border:none;border-radius:0;text-align:left;background:none}}
.backdrop{{position:fixed;inset:0;z-index:10;background:rgba(0,0,0,.45);display:flex;align-items:center;justify-content:center}}
.dialog{{min-width:240px}} .status:empty{{display:none}}
:focus-visible{{outline:2px solid {t.accent};outline-offset:1px}}
"""


# Makes the page behave: menus and dropdowns open and close, tabs switch, forms submit in
# place. Results go to `document.body.dataset` so the episode recorder can check them.
_SCRIPT = """
document.addEventListener('click', e => {
  const t = e.target.closest('button'); if (!t) return;
  const wrap = t.closest('.menuwrap');
  if (t.classList.contains('menubutton')) {
    const m = wrap.querySelector('.menu'); m.hidden = !m.hidden; t.setAttribute('aria-expanded', String(!m.hidden));
  } else if (t.classList.contains('menuitem') || t.classList.contains('option')) {
    wrap.querySelector('.menu').hidden = true; document.body.dataset.chosen = t.textContent;
    if (t.classList.contains('option')) wrap.querySelector('.menubutton').textContent = t.textContent + ' ▾';
    const s = wrap.querySelector('[data-status]'); if (s) s.textContent = '✓ ' + t.textContent;
  } else if (t.classList.contains('tab')) {
    t.parentElement.querySelectorAll('.tab').forEach(x => x.classList.toggle('active', x === t));
    document.body.dataset.tab = t.textContent;
  }
});
document.addEventListener('submit', e => {
  e.preventDefault(); const f = e.target;
  document.body.dataset.submitted = JSON.stringify(Object.fromEntries(new FormData(f)));
  const p = document.createElement('p'); p.className = 'status';
  p.textContent = f.dataset.kind === 'login' ? '✓ ' + (f.username.value || '') : '✓';
  f.appendChild(p);
});
"""
