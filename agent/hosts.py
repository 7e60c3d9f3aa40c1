"""Hosts in one spelling: the form in which URL rules and connections are compared.

One address has many spellings in a URL, and a browser connects to all of them alike:
`127.0.0.2`, `2130706434`, `0x7f000002`, `0177.0.0.2`, `0x7f.2`, `127.2`, `127.0.0.%32`,
`１２７.０.０.２` (full-width) and `[::ffff:127.0.0.2]` (IPv4-mapped IPv6, which Chromium writes
`[::ffff:7f00:2]`) are one host. `canonical_host` follows the WHATWG URL standard's host
parser, which Chromium implements: percent-decode, map to IDNA (punycode, lower case, full-width
forms folded), and parse a host whose last label is a number as an IPv4 address with
decimal, octal (leading 0) or hex (0x) parts, the last part filling the remaining bytes. IP
addresses come out as `ipaddress` objects: IPv4-mapped IPv6 becomes its IPv4 address (a
connection to one is a connection to the other); other IPv6 spellings compress to one.

`address_aliases` lists the addresses a connection to an address can reach, for block rules
(refusing more is the safe side): the unspecified address reaches the loopback one on Linux,
and IPv6 forms that embed an IPv4 address (IPv4-compatible, NAT64 64:ff9b::/96, 6to4) are
routed to it where those mechanisms run.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)")


def canonical_host(host: str | IPAddress) -> str | IPAddress:
    """`host` (as written in a URL, brackets allowed, or an address) as an IP address, or an
    IDNA host name in lower case without trailing dots. Raises `ValueError` naming the host when
    a browser would refuse it too (an IPv6 literal that does not parse, a number-like host that
    is not an IPv4 address, a name IDNA cannot encode)."""
    if isinstance(host, ipaddress.IPv6Address):
        return host.ipv4_mapped or host
    if isinstance(host, ipaddress.IPv4Address):
        return host
    text = unquote(host.strip())
    if text.startswith("[") or ":" in text:
        return _ipv6(text.removeprefix("[").removesuffix("]"), host)
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise ValueError(f"host {host!r} is not a valid host name ({error})") from None
    labels = name.split(".")
    if labels and labels[-1] == "":
        labels.pop()  # one trailing dot belongs to the address ("127.0.0.1.")
    if labels and _NUMBER.fullmatch(labels[-1]):
        return _ipv4(labels, host)
    name = name.rstrip(".")
    if not name:
        raise ValueError(f"host {host!r} is empty")
    return name


def _ipv6(text: str, host: str) -> IPAddress:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"host {host!r} is not a valid IPv6 address") from None
    if address.scope_id:
        raise ValueError(f"host {host!r} has a zone id, which URLs do not allow")
    return address.ipv4_mapped or address


def _ipv4(labels: list[str], host: str) -> ipaddress.IPv4Address:
    """The WHATWG IPv4 parser: up to 4 parts, each decimal, octal or hex; all but the last
    are one byte, the last fills the bytes left."""
    if len(labels) > 4:
        raise ValueError(f"host {host!r} ends in a number but has {len(labels)} parts; an IPv4 address has 1-4")
    numbers = []
    for label in labels:
        if not _NUMBER.fullmatch(label):
            raise ValueError(f"host {host!r} ends in a number but part {label!r} is not one")
        if label[:2].lower() == "0x":
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if not set(label) <= set("01234567"):
                raise ValueError(f"host {host!r} has the octal part {label!r} with a digit over 7")
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"host {host!r} is an IPv4 address with a part out of range")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def address_aliases(address: IPAddress) -> set[IPAddress]:
    """`address` and the addresses a connection to it may reach (see the module docstring)."""
    aliases: set[IPAddress] = {address}
    if address.is_unspecified:
        aliases |= {ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")}
    if isinstance(address, ipaddress.IPv6Address):
        packed = int(address)
        if address in _NAT64 or (packed >> 32 == 0 and packed > 1):  # NAT64, IPv4-compatible
            aliases.add(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
        if address.sixtofour is not None:
            aliases.add(address.sixtofour)
    return aliases


def host_text(host: str | IPAddress) -> str:
    """A canonical host as it is written in a URL's authority (IPv6 in brackets)."""
    return f"[{host}]" if isinstance(host, ipaddress.IPv6Address) else str(host)
