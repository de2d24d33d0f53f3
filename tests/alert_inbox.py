"""A webhook on 127.0.0.1 (random port) that keeps what Apprise's ``json://`` service posts to it, so the
alert tests send through the real Apprise over real HTTP, with no internet, and read what arrived."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AlertInbox:
    """Takes every POST (status ``status``, 200 by default) and keeps its JSON body: ``title``, ``message``,
    ``type``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        """The Apprise URL of this inbox."""
        return f"json://127.0.0.1:{self._server.server_address[1]}/alerts"

    def connection(self) -> str:
        """An ``AIRFLOW_CONN_KRONE_ALERTS`` value: an ``apprise`` connection in the provider's format."""
        return json.dumps({"conn_type": "apprise", "extra": {"config": {"path": self.url}}})

    def start(self) -> AlertInbox:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with inbox._lock:
                    inbox.received.append(json.loads(body))
                self.send_response(inbox.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
