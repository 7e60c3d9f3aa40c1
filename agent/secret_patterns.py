"""A regular expression that finds a secret value in the encodings text carries it in.

A secret typed into a GET form comes back URL-encoded in the next URL (`hunter2+pa%24%24%21`);
a page may show it HTML-escaped, a JSON body escaped, an `Authorization: Basic` header or a
token base64-encoded. `secret_pattern(value)` matches the value written character by character
in any mix of:
- itself;
- percent-encoding of its UTF-8 bytes, in either hex case, also double-encoded (`%2524`), and
  `+` for a space (form encoding);
- HTML character references: decimal and hex (leading zeros, optional `;`) and every named
  entity of the character (`&dollar;`, `&excl;`, `&amp;`);
- JSON / JavaScript escapes: `\\uXXXX` (surrogate pairs beyond the BMP), `\\xHH`, and the short
  escapes (`\\"`, `\\\\`, `\\/`, `\\n`, ...);
and, for values of at least `MIN_BASE64_BYTES` bytes, the base64 (standard and URL-safe
alphabet) of the value at each of the three byte alignments it can have inside a longer
encoded string (`user:hunter2` -> `dXNlcjpodW50ZXIy`), without the edge characters that depend
on the neighbouring bytes. Shorter values are not searched in base64: their few characters
would match unrelated text.
"""

from __future__ import annotations

import base64
import functools
import html.entities
import re

MIN_BASE64_BYTES = 6
_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ENTITY_NAMES: dict[str, list[str]] = {}
for _name, _text in html.entities.html5.items():
    if len(_text) == 1:
        _ENTITY_NAMES.setdefault(_text, []).append(_name)


def _hex(number: int, width: int = 1) -> str:
    """`number` in hex as a regex that accepts either case of each digit."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{number:0{width}x}")


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return r"\\u" + _hex(code, 4)
    code -= 0x10000  # a surrogate pair
    return r"\\u" + _hex(0xD800 + (code >> 10), 4) + r"\\u" + _hex(0xDC00 + (code & 0x3FF), 4)


@functools.lru_cache(maxsize=4096)
def char_pattern(char: str) -> str:
    """A regex for one character in any of the encodings above."""
    code = ord(char)
    forms = [re.escape(char), "".join(f"%(?:25)?{_hex(b, 2)}" for b in char.encode("utf-8")),
             f"&#0*{code};?", f"&#[xX]0*{_hex(code)};?", _json_escape(char)]
    forms += [re.escape("&" + name) for name in _ENTITY_NAMES.get(char, [])]
    if char in _JSON_SHORT:
        forms.append(re.escape(_JSON_SHORT[char]))
    if code < 256:
        forms.append(r"\\x" + _hex(code, 2))
    if char == " ":
        forms += [r"\+", "%(?:25)?2[bB]"]  # form encoding, and that '+' percent-encoded again
    return "(?:" + "|".join(forms) + ")"


def base64_cores(value: str) -> list[str]:
    """The parts of the value's base64 that do not depend on the bytes around it, per alignment
    and alphabet (none for values under `MIN_BASE64_BYTES` bytes)."""
    data = value.encode("utf-8")
    if len(data) < MIN_BASE64_BYTES:
        return []
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start, end = -(-offset * 4 // 3), (offset + len(data)) * 4 // 3  # skip chars mixing outside bytes
        core = encoded[start:end]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return sorted(cores, key=len, reverse=True)


def secret_pattern(value: str) -> str:
    """A regex source matching `value` in any of the module's encodings (a base64 core's own
    characters may be percent-encoded too: `+`, `/` in a URL)."""
    return "|".join("".join(char_pattern(c) for c in text) for text in [value, *base64_cores(value)])
