"""`tower web [SESSION]`: the TUI of a running fleet in a browser, served by textual-serve.

Each browser tab runs `tower attach SESSION` (a view of the fleet, as in a terminal) behind
textual-serve's web driver. The page is served on 127.0.0.1 by default and only with the
random token printed in its URL: the first request must carry `?token=…` (a wrong or missing
one gets 403); the page then holds it in an HttpOnly, SameSite=Strict cookie for its
websocket and assets. Binding another address needs `--allow-remote` and prints a warning:
anyone who can reach it and has the URL steers the fleet.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from textual_serve.server import Server

COOKIE = "tower_token"
LOOPBACK = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenServer(Server):
    """textual-serve's server, behind a token (query on the page, then a cookie)."""

    def __init__(self, command: str, host: str, port: int, token: str, title: str) -> None:
        super().__init__(command, host=host, port=port, title=title)
        self.token = token

    def initialize_logging(self) -> None:
        logging.getLogger("aiohttp").setLevel(logging.WARNING)

    async def on_startup(self, app: web.Application) -> None:
        return None  # `tower web` prints its own line (the URL with the token)

    def _allowed(self, request: web.Request) -> bool:
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()

        @web.middleware
        async def guard(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            if not self._allowed(request):
                raise web.HTTPForbidden(text="tower web: a wrong or missing token\n")
            response = await handler(request)
            if request.query.get("token") and isinstance(response, web.Response):
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
            return response

        app.middlewares.append(guard)
        return app


def serve_web(session: str, host: str, port: int, token: str | None = None) -> None:
    """Serves the fleet's TUI until Ctrl-C; prints the URL (with its token) first."""
    token = token or secrets.token_urlsafe(24)
    command = shlex.join([sys.executable, "-m", "tower", "attach", session])
    server = TokenServer(command, host, port, token, title=f"tower · {session}")
    shown = f"[{host}]" if ":" in host else host
    print(f"tower web: http://{shown}:{port}/?token={token}", flush=True)
    server.serve()


def main_args(args: Any) -> tuple[str, int]:
    """The address `tower web` binds: 127.0.0.1 unless told otherwise (with the flag)."""
    host = str(args.host)
    if not is_loopback(host):
        if not args.allow_remote:
            raise ValueError(
                f"tower web: --host {host} is reachable from other machines; "
                "add --allow-remote to serve there anyway"
            )
        print(
            f"tower web: warning: serving on {host}: anyone who can reach it and has the URL "
            "(its token) can steer this fleet",
            file=sys.stderr,
        )
    return host, int(args.port)
