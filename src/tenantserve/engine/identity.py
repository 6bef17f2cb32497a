"""Proof that an HTTP server is *this* engine, without sending it the admin token.

Before the sidecar sends ``Authorization: Bearer <admin token>`` to an engine URL, it sends a fresh random nonce to
``POST /tenantserve/identity``; the tenant middleware inside the engine answers with
``HMAC-SHA256(admin token, domain || port || nonce)``. Only a server that holds the token can answer, and the port
the engine listens on is part of the message, so a program squatting on the sidecar's target port cannot relay the
challenge to the real engine elsewhere. The token never leaves the sidecar before the proof checks out.
Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: The route the middleware answers (public: it proves possession of the token, it does not require it).
IDENTITY_ROUTE = "/tenantserve/identity"
_DOMAIN = b"tenantserve-engine-identity-v1"
NONCE_BYTES = 32


def new_nonce() -> str:
    """A fresh challenge: 32 random bytes, hex (64 characters)."""
    return secrets.token_hex(NONCE_BYTES)


def valid_nonce(nonce: object) -> bool:
    """A challenge the middleware agrees to answer: exactly 64 lowercase hex characters."""
    return (isinstance(nonce, str) and len(nonce) == 2 * NONCE_BYTES
            and all(c in "0123456789abcdef" for c in nonce))


def proof(token: str, nonce: str, port: int) -> str:
    """Hex HMAC-SHA256 of (domain, the engine's listening port, nonce) under the admin token."""
    message = b"|".join((_DOMAIN, str(port).encode(), nonce.encode()))
    return hmac.new(token.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()


def verify(token: str, nonce: str, port: int, answer: object) -> bool:
    """Does ``answer`` prove the token for this nonce and port? Constant-time comparison. Never raises: an answer
    that is not a string, or holds non-ASCII characters (``hmac.compare_digest`` raises TypeError on those), is no
    proof (the server answering may be a squatter on the port)."""
    return (isinstance(answer, str) and answer.isascii()
            and hmac.compare_digest(proof(token, nonce, port), answer))
