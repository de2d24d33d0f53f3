"""A scriptable OpenAI chat-completions server on 127.0.0.1 (random port), so tests exercise the real
``openai`` client over real HTTP with no internet, and can assert on exactly what the server RECEIVED."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: chat ``content`` (status 200), or an HTTP ``status`` with an error body, or a
    raw ``body``; ``delay`` seconds first (to trip client timeouts)."""

    content: str | None = None
    status: int = 200
    body: str | None = None
    delay: float = 0.0
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7})


Script = Callable[[dict[str, Any]], "Reply | str"]


def completion(content: str, usage: dict[str, int]) -> str:
    return json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {**usage, "total_tokens": sum(usage.values())},
    })


class FakeLLM:
    """Answers each POST with the next scripted reply (the last one repeats); records every request body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._replies: list[Reply | str | Script] = ['{"prediction": "Normal", "reason": "ok"}']
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def respond(self, *replies: Reply | str | Script) -> None:
        """Script the next replies: a content string, a :class:`Reply`, or ``f(request_body) -> reply``."""
        with self._lock:
            self._replies = list(replies)

    def messages(self, i: int = -1) -> list[dict[str, str]]:
        return self.requests[i]["messages"]

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping on a delay
        self._server.shutdown()
        self._server.server_close()

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            reply = self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]
        if callable(reply):
            reply = reply(body)
        return Reply(content=reply) if isinstance(reply, str) else reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = fake._next(body)
                if reply.delay and fake._stop.wait(reply.delay):
                    return
                if reply.body is not None:
                    payload = reply.body
                elif reply.status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {reply.status}", "type": "test"}})
                else:
                    payload = completion(reply.content or "", reply.usage)
                data = payload.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) before we answered
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
                pass

        return Handler
