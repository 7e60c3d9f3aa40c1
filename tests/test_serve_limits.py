"""The server's limits against a real server over real sockets: slow and vanishing clients,
image pixels bounded before decoding, malformed input answered with 4xx (never 500)."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

import demo.serve
from _scripted_checkpoint import build_scripted_checkpoint
from demo.openai_schema import ServerLimits
from demo.serve import create_app, running
from vlm import VLM

MODEL = "scripted-tiny"
IMAGE = Image.new("RGB", (96, 64), (200, 30, 30))


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user(text: str, *images: Image.Image) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def chat(url: str, **body) -> httpx.Response:
    body = json.dumps({"model": MODEL, "max_tokens": 4, **body})  # ASCII: a lone surrogate travels as \\udcff
    return httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                      timeout=60)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return VLM.from_pretrained(build_scripted_checkpoint(tmp_path_factory.mktemp("scripted")).path)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def url(vlm, media_dir):
    limits = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5, allowed_local_media_path=media_dir,
                          max_queued_image_pixels=600 * 600)
    with running(create_app(vlm, limits=limits, model_name=MODEL)) as base:
        yield base


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_headers_that_never_complete_get_408_and_the_connection_closed(url):
    with _connect(url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")  # ...and nothing more
        start = time.monotonic()
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request headers not complete within 0.5 s" in answer
    assert time.monotonic() - start < 5
    with _connect(url) as idle:  # a connection that never sends a byte is closed too
        assert _read_all(idle) == b""


def test_a_body_that_never_completes_gets_408(url):
    with _connect(url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"messages\": [")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "was not complete within 0.5 s" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert chat(url, messages=[user("still serving")]).status_code == 200


def test_a_client_leaving_mid_body_is_logged_as_a_normal_event(url, caplog):
    caplog.set_level(logging.INFO)
    with _connect(url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"messages\": [")
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while "client left after" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.02)
    time.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("body", [
    b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # past the JSON parser's recursion limit
    b'{"messages": ' + b"[" * 900 + b"]" * 900 + b"}",  # parses; its repr in the error recursed
    b'{"model": "' + MODEL.encode() + b'", "stop": ' + b"[" * 5000 + b"]" * 5000 + b"}",
])
def test_deeply_nested_json_gets_400(url, body):
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["{media}/a\x00.png", "file://{media}/\x00", "{media}/" + "a" * 5000 + ".png",
                                  "{media}/" + "a/" * 3000 + "b.png", "{media}/\udcff.png"])
@pytest.mark.parametrize("kind", ["image_url", "video_url"])
def test_unusable_local_media_paths_get_400(url, media_dir, path, kind):
    part = {"type": kind, kind: {"url": path.format(media=media_dir)}}
    response = chat(url, messages=[{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].content[0]"


def test_images_past_the_pixel_bound_alone_get_413(url):
    big = Image.new("RGB", (500, 500))  # two of them: 500,000 pixels > 360,000 held at a time
    response = chat(url, messages=[user("two", big, big)])
    assert response.status_code == 413 and response.json()["error"]["code"] == "images_too_large"


def test_pixels_are_reserved_before_decoding(vlm, monkeypatch):
    """While one request's images decode, their pixels already count: a second one gets 429."""
    decoding, proceed = threading.Event(), threading.Event()
    decode = demo.serve.decode_images

    def held_decode(request):
        decoding.set()
        proceed.wait(20)
        decode(request)

    monkeypatch.setattr(demo.serve, "decode_images", held_decode)
    limits = ServerLimits(max_queued_image_pixels=96 * 64 + 10)
    with running(create_app(vlm, limits=limits, model_name=MODEL)) as base, ThreadPoolExecutor(1) as pool:
        first = pool.submit(chat, base, messages=[user("first", IMAGE)])
        assert decoding.wait(20)
        assert httpx.get(f"{base}/health").json()["image_pixels"] == 96 * 64
        refused = chat(base, messages=[user("second", IMAGE)])
        assert refused.status_code == 429 and "image pixels" in refused.json()["error"]["message"]
        proceed.set()
        assert first.result().status_code == 200
        assert httpx.get(f"{base}/health").json() == {"status": "ok", "pending": 0, "running": 0, "image_pixels": 0}


def test_a_corrupt_image_found_while_decoding_frees_its_reservation(url):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(buffer, format="PNG")
    truncated = "data:image/png;base64," + base64.b64encode(buffer.getvalue()[:-40]).decode()
    part = {"type": "image_url", "image_url": {"url": truncated}}
    response = chat(url, messages=[{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}])
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    assert httpx.get(f"{url}/health").json()["image_pixels"] == 0


@pytest.mark.slow
def test_health_answers_while_large_images_decode(vlm):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray((rng.integers(0, 4, (3000, 3000, 3)) * 60).astype("uint8"))  # slow to decode
    limits = ServerLimits(max_body_bytes=64 * 2**20, max_image_pixels=3000 * 3000, max_queued_image_pixels=4 * 3000**2)
    with running(create_app(vlm, limits=limits, model_name=MODEL)) as base, ThreadPoolExecutor(3) as pool:
        body = {"model": MODEL, "max_tokens": 1, "messages": [user("big", noisy)]}
        replies = [pool.submit(httpx.post, f"{base}/v1/chat/completions", json=body, timeout=300) for _ in range(3)]
        worst = 0.0
        while not all(r.done() for r in replies):
            start = time.monotonic()
            httpx.get(f"{base}/health", timeout=30)
            worst = max(worst, time.monotonic() - start)
            time.sleep(0.05)
        assert [r.result().status_code for r in replies] == [200] * 3
    assert worst < 1.0, f"/health took {worst:.2f} s while images decoded"
