"""Serve one benchmark target: ``python -m wshub.bench.serve TARGET --port P``.

Every uvicorn-based target runs with the same uvicorn settings (uvloop,
httptools, the sans-I/O websockets implementation, no compression), so that
the comparison is between connection managers, not server configurations.
wshub itself runs exactly as ``wshub serve`` does.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn

_APPS = {
    "seed": "wshub.bench.baselines:seed_app",
    "seed-once": "wshub.bench.baselines:seed_once_app",
    "bare": "wshub.bench.baselines:bare_app",
}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the target until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.target in ("wshub", "wshub-redis"):
        from wshub.server.serve import run
        from wshub.settings import Settings

        os.environ.setdefault("WSHUB_PING_INTERVAL", "3600")  # no app pings mid-run
        # The bench publisher is one client sending as fast as the window allows.
        os.environ.setdefault("WSHUB_RATE_LIMIT", "1000000")
        os.environ.setdefault("WSHUB_RATE_BURST", "1000000")
        settings = Settings(
            host="127.0.0.1", port=args.port, workers=args.workers, log_level="warning"
        )
        run("wshub.demo:app", settings, log_level="warning")
    elif args.target == "websockets":
        import uvloop

        from wshub.bench.baselines import serve_websockets

        uvloop.run(serve_websockets("127.0.0.1", args.port))
    else:
        app: Any = _APPS.get(args.target)
        if args.target in ("socketio", "socketio-redis"):
            from wshub.bench.baselines import socketio_app

            redis_url = os.environ.get("WSHUB_BROKER") if args.target != "socketio" else None
            app = socketio_app(redis_url)
        if app is None:
            parser.error(f"unknown target {args.target!r}")
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            log_level="warning",
            lifespan="off",
        )


if __name__ == "__main__":
    main()
