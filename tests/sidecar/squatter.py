"""A tiny HTTP server standing where the engine should be, recording every request's headers.

A fake on purpose: it plays a program that took the engine's port (it must never be sent the admin token), or, with
``prove_with``, an engine that holds the token and answers the identity challenge like the tenant middleware does.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tenantserve.engine import identity


class Squatter:
    def __init__(self, *, prove_with: str | None = None, proof_port: int | None = None, proof: str | None = None,
                 port: int = 0) -> None:
        """``prove_with``: answer the challenge with this token (for ``proof_port``, default the real port);
        ``proof``: answer this fixed string; neither: answer 404 like any other program."""
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> bytes:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                return body

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                if self.path == "/health":
                    self._answer(200, {})
                elif self.path == "/metrics":
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif self.path == "/v1/models":
                    self._answer(200, {"object": "list", "data": [{"id": "base", "root": "/m", "parent": None}]})
                else:
                    self._answer(404, {"error": {"message": "no", "type": "NotFound", "code": 404}})

            def do_POST(self) -> None:  # noqa: N802
                body = self._record()
                if self.path == identity.IDENTITY_ROUTE and (prove_with or proof):
                    nonce = json.loads(body)["nonce"]
                    port = proof_port or owner.port
                    answer = proof or identity.proof(prove_with, nonce, port)  # type: ignore[arg-type]
                    self._answer(200, {"proof": answer})
                elif self.path == "/v1/completions":
                    self._answer(200, {"choices": [{"text": "x"}]})
                elif self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                    self._answer(200, {})
                else:
                    self._answer(404, {"error": {"message": "no", "type": "NotFound", "code": 404}})

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def authorizations(self) -> list[str]:
        """Every Authorization header it was sent."""
        return [h["authorization"] for _, _, h in self.requests if "authorization" in h]

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]

    def __enter__(self) -> Squatter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
