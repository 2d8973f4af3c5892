"""The explorer's gate: every request needs the token (compared in constant time), every answer
carries headers that keep the page from loading anything from the network or leaking the token.

The token arrives as ``?token=``, as ``Authorization: Token …`` (or ``Bearer …``) or as the
cookie the server sets when the page is opened with a valid ``?token=``, the way Jupyter does it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self' http://127.0.0.1:* http://localhost:*",
    )
)
"""Nothing from another origin: no CDN, no network load, no inline script; only local pages
(a Jupyter notebook on this machine) may show the explorer in a frame."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def new_token() -> str:
    """A random access token (48 hex digits, 192 bits)."""
    return secrets.token_hex(24)


def cookie_name(request: Request) -> str:
    """The token cookie's name: one per port, since cookies do not tell ports apart."""
    return f"cnnviz-token-{request.url.port or 80}"


def given_tokens(request: Request) -> list[str]:
    """Every token the request carries (query, header, cookie)."""
    found = []
    if "token" in request.query_params:
        found.append(request.query_params["token"])
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value:
        found.append(value.strip())
    cookie = request.cookies.get(cookie_name(request))
    if cookie:
        found.append(cookie)
    return found


def token_matches(given: str, token: str) -> bool:
    """``given == token``, in time that does not depend on where they differ."""
    return secrets.compare_digest(given.encode("utf-8", "replace"), token.encode())


def json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class TokenGate(BaseHTTPMiddleware):
    """403 for a request without the token; the security headers on every answer; the cookie
    set when the page (``/``) is opened with ``?token=``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        tokens = given_tokens(request)
        # every candidate is compared, so the time does not say which one was tried
        matched = [token_matches(given, self.token) for given in tokens]
        if any(matched):
            response = await call_next(request)
            from_query = request.query_params.get("token")
            opened = request.url.path == "/"  # the page itself; its requests need no new cookie
            if opened and from_query is not None and token_matches(from_query, self.token):
                response.set_cookie(
                    cookie_name(request), self.token, httponly=True, samesite="strict"
                )
        else:
            what = "a wrong token" if tokens else "no token"
            response = json_error(
                f"Forbidden: {what}. Open the URL `cnnviz serve` printed (it ends in "
                "?token=…), or send the header 'Authorization: Token …'.",
                403,
            )
        response.headers.update(SECURITY_HEADERS)
        return response
