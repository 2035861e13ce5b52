"""Run the app under uvicorn: in the foreground (`loraflow serve`) or in a thread (tests, notebooks)."""
from __future__ import annotations

import socket
import sys
import threading

from loraflow.serve.options import ServeOptions


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


def serve(options: ServeOptions) -> None:
    if options.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {options.host} exposes loraflow to the network"
              + ("" if options.auth_token else "; consider --auth-token"), file=sys.stderr)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    print(f"loraflow serve: http://{'[' + host + ']' if ':' in host else host}:{port}/  "
          f"(models: {options.models_dir}, outputs: {options.outputs_dir})", flush=True)
    make_server(options, sock).run(sockets=[sock])


class ServerThread:
    """`with ServerThread(options) as url:` — a real uvicorn server on a free loopback port."""

    def __init__(self, options: ServeOptions):
        self.options = options
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
