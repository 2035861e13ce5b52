"""Run the app under uvicorn: in the foreground (`loraflow serve`) or in a thread (tests, notebooks)."""
from __future__ import annotations

import secrets
import socket
import sys
import threading

from loraflow.serve.options import ServeOptions
from loraflow.serve.security import is_loopback


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(options: ServeOptions, sock: socket.socket):
    import uvicorn

    from loraflow.serve.app import create_app

    config = uvicorn.Config(create_app(options), log_level=options.log_level, ws="websockets-sansio",
                            timeout_graceful_shutdown=5, lifespan="on")
    return uvicorn.Server(config)


def with_network_token(options: ServeOptions) -> ServeOptions:
    """As Jupyter: a server reachable beyond loopback answers no API call without a token; one is
    made up when none was given."""
    if is_loopback(options.host) or options.auth_token:
        return options
    return options.model_copy(update={"auth_token": secrets.token_urlsafe(24)})


def serve(options: ServeOptions) -> None:
    options = with_network_token(options)
    if not is_loopback(options.host):
        print(f"warning: binding to {options.host} exposes loraflow to the network; every API call needs the "
              "token (Authorization: Bearer TOKEN or ?token=TOKEN)", file=sys.stderr)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    query = f"?token={options.auth_token}" if options.auth_token and not is_loopback(options.host) else ""
    print(f"loraflow serve: http://{'[' + host + ']' if ':' in host else host}:{port}/{query}  "
          f"(models: {options.models_dir}, outputs: {options.outputs_dir})", flush=True)
    make_server(options, sock).run(sockets=[sock])


class ServerThread:
    """`with ServerThread(options) as url:` — a real uvicorn server on a free loopback port."""

    def __init__(self, options: ServeOptions):
        self.options = options = with_network_token(options)
        self.sock = bind(options.host, options.port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{options.host}:{self.port}"
        self.server = make_server(options, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("loraflow server did not start")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    @property
    def state(self):
        return self.server.config.app.state.loraflow

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
