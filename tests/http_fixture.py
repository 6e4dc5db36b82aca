"""A local HTTP file server on 127.0.0.1 with Range support and failure injection, for download tests."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves `files` (path → bytes). `fail_next[path] = [503, ...]` answers the next requests with
    those statuses; `cut_next[path] = n` sends only n bytes of the next response, then drops it."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.fail_next: dict[str, list[int]] = {}
        self.cut_next: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                failures = server.fail_next.get(path)
                if failures:
                    self.send_error(failures.pop(0))
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                body = server.files[path]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                cut = server.cut_next.pop(path, None)
                self.wfile.write(part if cut is None else part[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def serve(files: dict[str, bytes]):
    with FileServer(files) as server:
        yield server
