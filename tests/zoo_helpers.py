"""A real HTTP server on 127.0.0.1 for the zoo tests (no test leaves the machine).

``ZooServer`` serves byte strings with ETag, Range/If-Range (206) and Content-Length, records
every request, and can misbehave on purpose: drop the connection after N bytes of the first
response, or hang after N bytes until released (so a client process can be killed mid-file).
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import yaml

BLOCK = 64 * 1024


class ZooServer:
    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.requests: List[Dict[str, Optional[str]]] = []
        self.bytes_sent = 0
        self.drop_after: Optional[int] = None    # first response only: close after this many body bytes
        self.hang_after: Optional[int] = None    # first response only: stall after this many body bytes
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                first = not server.requests
                server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                        "if_range": self.headers.get("If-Range")})
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                start, status = 0, 200
                rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                if rng and rng.startswith("bytes=") and (if_range is None or if_range == etag):
                    start = int(rng[len("bytes="):].split("-")[0])
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                sent = 0
                try:
                    while sent < len(body):
                        if first and server.drop_after is not None and sent >= server.drop_after:
                            self.close_connection = True
                            return
                        if first and server.hang_after is not None and sent >= server.hang_after:
                            self.wfile.flush()
                            server.release.wait(60)
                            return
                        piece = body[sent:sent + BLOCK]
                        self.wfile.write(piece)
                        sent += len(piece)
                        server.bytes_sent += len(piece)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def payload(n: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (a stand-in for a checkpoint file)."""
    out = bytearray()
    block = hashlib.sha256(f"seed{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def write_registry(path: Path, entries: Dict[str, dict]) -> Path:
    """A registry YAML with defaults filled in for the keys tests do not care about."""
    full = {}
    for name, e in entries.items():
        full[name] = {"method": name, "arch": "resnet18", "format": "torchvision", "filename": f"{name}.pth",
                      "urls": [], "url_source": "test", **e}
    path.write_text(yaml.safe_dump({"version": 1, "entries": full}))
    return path
