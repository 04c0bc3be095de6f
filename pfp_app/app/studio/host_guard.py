"""Requests for another host or from another origin are refused before they reach Gradio.

DNS rebinding: a web page the creator visits (evil.example) can make its name resolve to 127.0.0.1
and then script requests to the studio; they carry `Host: evil.example`, which is refused here. A page
served by another local port (another app, a dev server) sends `Origin: http://localhost:3000`:
Gradio's own CORS layer lets any localhost origin in; here only the studio's own origin is accepted.

A plain ASGI middleware (no Starlette TrustedHostMiddleware: it checks Host only, not Origin), given to
Gradio's FastAPI app through `launch(app_kwargs={"middleware": [...]})`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_ADDRESS = ("0.0.0.0", "::")


def hostname_of(host_header: str) -> str:
    """'[::1]:7860' -> '::1', 'LocalHost.:80' -> 'localhost'."""
    try:
        name = urlsplit("//" + host_header.strip()).hostname or ""
    except ValueError:
        return ""
    return name.rstrip(".").lower()


def allowed_hosts(listen: str | None) -> set[str]:
    """The names the studio answers to: localhost always; with --listen HOST also HOST, and for an
    any-address bind (0.0.0.0) the machine's own name and addresses."""
    hosts = set(LOCAL_HOSTS)
    if listen and listen not in ANY_ADDRESS:
        hosts.add(hostname_of(listen) or listen.lower())
    elif listen:
        name = socket.gethostname()
        hosts |= {name.lower(), socket.getfqdn().lower()}
        try:
            hosts |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    return hosts


class HostGuard:
    def __init__(self, app, hosts: Iterable[str], port: int):
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.port = int(port)

    def _refusal(self, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if hostname_of(host) not in self.hosts:
            return "host not allowed"  # the value is not echoed
        origin = headers.get(b"origin")
        if origin is not None:
            try:
                o = urlsplit(origin.decode("latin-1"))
                port = o.port or {"http": 80, "https": 443}.get(o.scheme)
            except ValueError:
                return "origin not allowed"
            if (o.hostname or "").rstrip(".").lower() not in self.hosts or port != self.port:
                return "origin not allowed"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        reason = self._refusal(dict(scope.get("headers") or []))
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = f"403 Forbidden: {reason} (PFP Studio answers to its own address only)\n".encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
