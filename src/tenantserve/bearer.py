"""The ``Authorization: Bearer <token>`` header, read and written in one place (the engine's middleware, the
sidecar's gates and the operator CLI all use it)."""

from __future__ import annotations

SCHEME = "bearer"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header value: ``Bearer <token>`` (scheme case-insensitive, the token
    stripped of surrounding whitespace). None for no header, another scheme, or an empty token."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == SCHEME and token else None


def bearer_header(token: str | None) -> dict[str, str]:
    """The request header carrying ``token``; no header at all without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}
