"""Host header (DNS rebinding) and token guards of the server, through a real uvicorn server."""
from __future__ import annotations

import httpx
import pytest

from loraflow.serve.security import allowed_hosts, host_name
from loraflow.serve.server import with_network_token


@pytest.mark.parametrize("header,name", [("127.0.0.1:8188", "127.0.0.1"), ("[::1]:8188", "::1"), ("[::1]", "::1"),
                                         ("LocalHost", "localhost"), ("Evil.Example:80", "evil.example"), ("", "")])
def test_host_name_drops_the_port(header, name):
    assert host_name(header) == name


def test_allowed_hosts_are_loopback_bind_address_and_extra_names():
    assert allowed_hosts("127.0.0.1", []) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("192.168.1.5", ["Studio.lan:7860"]) == {"localhost", "127.0.0.1", "::1", "192.168.1.5",
                                                                  "studio.lan"}
    assert allowed_hosts("127.0.0.1", ["*"]) is None


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7860", "127.0.0.1.evil.example", "localhost.evil",
                                  "attacker.com:80", "0.0.0.0"])
def test_unknown_host_is_refused_on_every_route_even_with_a_matching_origin(server, host):
    origin = f"http://{host}"
    for method, path in (("GET", "/api/health"), ("GET", "/object_info"), ("POST", "/prompt"),
                         ("POST", "/api/jobs/generate"), ("GET", "/"), ("GET", "/view?filename=x.png")):
        r = server.request(method, path, headers={"Host": host, "Origin": origin}, json={})
        assert r.status_code == 403 and "Host" in r.json()["error"], (method, path, r.status_code)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_names_are_served(server, host):
    port = server.base_url.port
    assert server.get("/api/health", headers={"Host": f"{host}:{port}"}).status_code == 200


def test_websocket_with_a_foreign_host_is_refused(server):
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    refused = server.get("/ws?clientId=x", headers={**upgrade, "Host": "evil.example"})
    assert refused.status_code == 403
    from websockets.sync.client import connect

    with connect(str(server.base_url).replace("http", "ws") + "/ws?clientId=x") as ws:  # the right Host is served
        assert '"status"' in ws.recv(timeout=5)


def test_allowed_host_option_serves_that_name(start_server):
    url, _ = start_server(allowed_host=["studio.lan"])
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/api/health", headers={"Host": "studio.lan"}).status_code == 200
        assert client.get("/api/health", headers={"Host": "other.lan"}).status_code == 403


def test_beyond_loopback_a_token_is_made_up_and_required():
    from loraflow.serve.options import ServeOptions

    assert with_network_token(ServeOptions(host="127.0.0.1")).auth_token is None
    made = with_network_token(ServeOptions(host="0.0.0.0")).auth_token
    assert made and len(made) >= 24 and made != with_network_token(ServeOptions(host="0.0.0.0")).auth_token
    assert with_network_token(ServeOptions(host="0.0.0.0", token="mine")).auth_token == "mine"
