"""The admin token is checked before a body is read, and no body over 1 MiB is buffered (413, the error shape)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

from tenantserve.sidecar.gate import MAX_BODY_BYTES
from tests.sidecar.serving import TOKEN, SidecarThread


def _raw(sidecar: SidecarThread, head: str, body_chunks: Iterator[bytes] = iter(()), *, wait: float = 10.0) -> str:
    """Send a raw request (head, then chunks as the server accepts them); the response's first line and body."""
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=wait) as conn:
        conn.sendall(head.encode())
        try:
            for chunk in body_chunks:
                conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all: what we test
        data = b""
        try:
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                part = conn.recv(65536)
                if not part:
                    break
                data += part
        except (ConnectionResetError, socket.timeout):
            pass
    return data.decode("latin-1")


def test_no_token_is_refused_from_the_headers_without_reading_the_body(sidecar: SidecarThread) -> None:
    """Content-Length promises 512 KiB that never comes: the 401 arrives anyway (a route would wait for the body)."""
    for auth, code in (("", "missing_token"), ("Authorization: Bearer wrong\r\n", "invalid_token")):
        start = time.monotonic()
        answer = _raw(sidecar, f"POST /admin/tenants HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                      f"Content-Length: {512 * 1024}\r\n\r\n", wait=10.0)
        assert answer.startswith("HTTP/1.1 401"), answer[:200]
        assert f'"code":"{code}"' in answer and time.monotonic() - start < 5


def test_bodies_over_the_cap_are_413_declared_or_chunked(sidecar: SidecarThread) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    declared = _raw(sidecar, f"POST /admin/tenants HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                    f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n")
    assert declared.startswith("HTTP/1.1 413") and '"code":"body_too_large"' in declared
    chunk = b"x" * 65536

    def chunks() -> Iterator[bytes]:  # 2 MiB chunked, never declared
        for _ in range(32):
            yield b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    chunked = _raw(sidecar, f"POST /admin/tenants HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n", chunks())
    assert chunked.startswith("HTTP/1.1 413") and '"code":"body_too_large"' in chunked
    with sidecar.client() as c:  # a body under the cap still works, chunked or not, and so does a bad token check
        assert c.post("/admin/tenants", json={"id": "small"}).status_code == 201
        assert c.post("/admin/tenants", content=iter([b'{"id": ', b'"chunky"}']),
                      headers={"content-type": "application/json"}).status_code == 201
        padded = b'{"id": "padded"' + b" " * (MAX_BODY_BYTES - 100) + b"}"
        assert c.post("/admin/tenants", content=padded, headers={"content-type": "application/json"}).status_code == 201
        assert [t["id"] for t in c.get("/admin/tenants").json()] == ["acme", "small", "chunky", "padded"]


def test_public_routes_stay_open_and_unknown_admin_paths_need_the_token(sidecar: SidecarThread) -> None:
    with sidecar.client(token=None) as anyone:
        assert anyone.get("/healthz").status_code == 200
        nowhere = anyone.get("/admin/nowhere")
        assert nowhere.status_code == 401 and nowhere.json()["error"]["code"] == "missing_token"
