"""RulesProxy with a raw SOCKS5 client: refusals by host and by resolved address, relaying."""

import ipaddress
import socket
import struct

import pytest
from _web_utils import LocalServer

from agent.domains import DomainRules
from agent.proxy import ResolverRules, RulesProxy


def socks_connect(proxy, host, port):
    """A SOCKS5 CONNECT through `proxy`; returns (reply code, socket)."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    if isinstance(host, str):
        address = b"\x03" + bytes([len(host)]) + host.encode()
    else:
        address = (b"\x01" if host.version == 4 else b"\x04") + host.packed
    sock.sendall(b"\x05\x01\x00" + address + struct.pack("!H", port))
    return sock.recv(10)[1], sock


@pytest.fixture
def blocked_server():
    with LocalServer("127.0.0.2") as server:
        server.add("/", "hello")
        yield server


@pytest.mark.parametrize("host", [
    ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("::ffff:127.0.0.2"), "127.0.0.2", "2130706434",
    "0x7f.2", "rebound.test", "[::ffff:7f00:2]"])
def test_every_way_to_the_blocked_address_is_refused(blocked_server, host):
    refused = []
    proxy = RulesProxy(DomainRules(blocked_domains=["127.0.0.2"]), resolver_rules="MAP rebound.test 127.0.0.2",
                       on_refused=refused.append)
    try:
        code, sock = socks_connect(proxy, host, blocked_server.port)
        sock.close()
    finally:
        proxy.close()
    assert code == 2 and len(refused) == 1 and "127.0.0.2" in refused[0].rule
    assert blocked_server.requests == []


def test_an_allowed_connection_is_relayed_both_ways(blocked_server):
    proxy = RulesProxy(DomainRules(blocked_domains=["127.0.0.1"]), resolver_rules="MAP other.test 127.0.0.2")
    try:
        code, sock = socks_connect(proxy, "other.test", blocked_server.port)
        assert code == 0
        sock.sendall(b"GET / HTTP/1.0\r\nHost: other.test\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # a half-close is passed on; the answer still comes back
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"hello")
        assert socks_connect(proxy, "unresolvable.invalid", 80)[0] == 4
        assert ResolverRules("MAP * ~NOTFOUND, EXCLUDE ok.test").map("ok.test") == "ok.test"
        with pytest.raises(ValueError, match="host resolver rule 'FOO'"):
            ResolverRules("FOO")
    finally:
        proxy.close()
