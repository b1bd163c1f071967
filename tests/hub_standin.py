"""A stand-in for the Hugging Face Hub that a test starts on 127.0.0.1: the two endpoints our downloads use (a model's
info with its files' metadata, as huggingface_hub's `HfApi.model_info(files_metadata=True)` asks for it, and
`/{repo}/resolve/{revision}/{path}` with Range support and the Hub's headers), serving bytes the test made. It records
every request (and its Range header), and can cut a file short or ignore Range, like a flaky network or a CDN, or
answer for a repository as for a gated one whose terms were not accepted."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def random_bytes(size: int, seed: int) -> bytes:
    return hashlib.shake_256(f"standin-{seed}".encode()).digest(size) if size else b""


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    sent: int = 0  # body bytes the stand-in wrote


@dataclass
class StandInHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops (once)
    ignore_range: bool = False
    gated: set[str] = field(default_factory=set)  # repositories whose terms this client has not accepted
    failing: dict[str, int] = field(default_factory=dict)  # repository -> the HTTP status its listing answers
    url: str = ""

    def add(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = files

    def downloads(self, path: str) -> list[Request]:
        """The requests for one file's bytes."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(path)]

    def info(self, repo: str) -> dict:
        siblings = []
        for name, data in self.repos[repo].items():
            lfs = name.endswith((".pth", ".onnx"))  # as on the Hub: binaries are LFS, small text files are git blobs
            entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if lfs:
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
                entry["blobId"] = git_blob_id(pointer.encode())
                entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(entry)
        return {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet: pytest shows failures, not every request
            pass

        def _refuse(self, code: str, status: int = 404) -> None:
            body = json.dumps({"error": f"{code} for {self.path}"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            record = Request("GET", self.path, self.headers.get("Range"))
            hub.requests.append(record)
            path = urlsplit(self.path).path
            if m := _INFO.match(path):
                if m.group(1) not in hub.repos:
                    return self._refuse("RepoNotFound")
                if m.group(1) in hub.gated:
                    return self._refuse("GatedRepo", 401)
                if m.group(1) in hub.failing:
                    return self._refuse("", hub.failing[m.group(1)])  # a server's own error: no Hub error code
                body = json.dumps(hub.info(m.group(1))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None
            if m := _RESOLVE.match(path):
                repo, name = m.group(1), unquote(m.group(3))
                if repo not in hub.repos:
                    return self._refuse("RepoNotFound")
                if name not in hub.repos[repo]:
                    return self._refuse("EntryNotFound")
                return self._send_file(record, hub.repos[repo][name], name)
            return self._refuse("RepoNotFound")

        def _send_file(self, record: Request, data: bytes, name: str) -> None:
            start = 0
            wanted = re.fullmatch(r"bytes=(\d+)-", record.range or "")
            if wanted and not hub.ignore_range:
                start = int(wanted.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            cut = hub.cut_after.pop(name, None)
            if cut is not None:
                body = body[:cut]  # then the connection closes short of Content-Length
            self.wfile.write(body)
            self.wfile.flush()
            record.sent = len(body)

    return Handler


class running_hub:
    """`with running_hub() as hub:` a StandInHub serving on a free port of 127.0.0.1, stopped afterwards."""

    def __init__(self) -> None:
        self.hub = StandInHub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.server.daemon_threads = True
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
