"""Serves the Chalice app over HTTP the way `chalice local` does, minus its
keep-alive stall.

Chalice's handler writes the headers and the body of an answer in separate
small packets; with Nagle's algorithm on, a keep-alive client's delayed ACK
holds the second one for ~40 ms. TCP_NODELAY removes the stall.

    python -m devstack.server [--port 8000] [--stage dev]
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from chalice.local import (ChaliceRequestHandler, CustomLocalChalice, LocalChalice,
                           LocalDevServer, ThreadedHTTPServer)

from devstack import stage


class NoDelayRequestHandler(ChaliceRequestHandler):
    disable_nagle_algorithm = True

    def __getattr__(self, name: str):
        # http.server answers a method it has no do_<METHOD> for (TRACE,
        # CONNECT, any made-up one) with a 501 HTML page. API Gateway hands
        # every method to the app, which answers 405 with Allow: do the same.
        if name.startswith("do_"):
            return self._generic_handle
        raise AttributeError(name)


class LocalApiServer(ThreadedHTTPServer):
    allow_reuse_address = True
    request_queue_size = 64


def create_server(host: str, port: int, stage_name: str = "dev") -> LocalDevServer:
    from chalice.cli.factory import CLIFactory

    # CLIFactory would overwrite os.environ with the stage's variables; hand it
    # a scratch mapping instead so values set by the caller (tests, make run) win.
    factory = CLIFactory(str(stage.PROJECT_DIR), environ={})
    config = factory.create_config_obj(chalice_stage_name=stage_name)
    app = config.chalice_app
    # What chalice.local.create_local_server does before it binds with its own
    # classes: keep current_request per thread, since requests run in threads.
    CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
    app.__class__ = CustomLocalChalice
    return LocalDevServer(app, config, host, port,
                          handler_cls=NoDelayRequestHandler, server_cls=LocalApiServer)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the API locally.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args()
    stage.apply(args.stage)
    server = create_server(args.host, args.port, args.stage)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"API: http://{args.host}:{args.port}", flush=True)
    try:
        server.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()


if __name__ == "__main__":
    main()
