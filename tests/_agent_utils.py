"""Test helpers for the agent core: a local server speaking the OpenAI chat-completions API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """A chat-completions server on 127.0.0.1 that records requests and answers `reply`."""

    def __init__(self, reply="Thought: ok\nAction: Click [1]\nMemory_Updated: {}", status=200, replies=None,
                 models=("fake-model",), errors=()):
        """`errors`: (status, message) answers given first, one per request, before the replies."""
        self.requests: list[tuple[str, dict, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, status, payload):
                payload = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                fake.requests.append((self.path, dict(self.headers), {}))
                if self.path != "/v1/models":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, dict(self.headers), body))
                if fake.errors:
                    status, message = fake.errors.pop(0)
                    return self._json(status, {"error": {"message": message, "type": "invalid_request_error"}})
                if fake.replies:  # answer from the list in order, then keep repeating the last
                    fake.reply = fake.replies.pop(0) if len(fake.replies) > 1 else fake.replies[0]
                self._json(fake.status, {"choices": [{"message": {"role": "assistant", "content": fake.reply}}]}
                           if fake.status == 200 else {"error": {"message": "model not found"}})

            def log_message(self, *args):
                pass

        self.reply, self.status, self.replies = reply, status, list(replies or [])
        self.models, self.errors = list(models), list(errors)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def close(self):
        self._httpd.shutdown()
