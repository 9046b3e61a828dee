import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# test helpers (naive references) live beside the tests: importable through pyproject pythonpath


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log every request to stderr."""

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_zoo(handler: type[BaseHTTPRequestHandler], monkeypatch) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 (a free port) as the zoo URL ``http://127.0.0.1:PORT/zoo``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MMOE_ZOO_URL", f"http://127.0.0.1:{httpd.server_port}/zoo")
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
