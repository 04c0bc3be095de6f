"""Issue 15 #8: the studio answers only to its own host and origin (DNS rebinding, other local origins)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pfp_app.app.studio.host_guard import allowed_hosts, hostname_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client():
    from pfp_app.app.studio.host_guard import HostGuard

    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("studio"))],
                    middleware=[Middleware(HostGuard, hosts=allowed_hosts(None), port=7860)])
    return TestClient(app, base_url="http://127.0.0.1:7860")


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LOCALHOST.", "127.0.0.1"])
def test_local_hosts_are_served(client, host):
    r = client.get("/", headers={"Host": host})
    assert r.status_code == 200 and r.text == "studio"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7860", "127.0.0.1.evil.example", "", "[::1"])
def test_other_hosts_are_refused(client, host):
    r = client.get("/", headers={"Host": host})
    assert r.status_code == 403 and "host not allowed" in r.text and "evil" not in r.text


@pytest.mark.parametrize("origin, status", [
    ("http://127.0.0.1:7860", 200), ("http://localhost:7860", 200),
    ("http://localhost:3000", 403), ("http://127.0.0.1:8080", 403), ("http://evil.example", 403), ("null", 403),
])
def test_only_the_studios_own_origin_is_accepted(client, origin, status):
    r = client.post("/", headers={"Origin": origin})
    assert r.status_code == (405 if status == 200 else 403)  # the route only has GET: 405 means it got through


def test_listen_host_is_added_and_parsing_is_strict():
    assert "192.168.1.5" in allowed_hosts("192.168.1.5") and "evil.example" not in allowed_hosts("0.0.0.0")
    assert hostname_of("[::1]:7860") == "::1" and hostname_of("[::1") == ""


def test_the_running_app_refuses_a_rebinding_request(tmp_path):
    """app.py end to end: `Host: evil.example` -> 403, the real address -> 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", "tiny-random", "--port", str(port),
                             "--projects", str(tmp_path / "projects")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                assert urllib.request.urlopen(url, timeout=2).status == 200
                break
            except (OSError, AssertionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"app.py did not start (exit {proc.poll()})")
                time.sleep(0.5)
        for headers in ({"Host": "evil.example"}, {"Origin": "http://localhost:1"}):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(url + "gradio_api/info", headers=headers), timeout=5)
            assert err.value.code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=15)
