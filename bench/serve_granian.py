"""The `cdp serve` app under granian (a Rust HTTP server) instead of uvicorn, one worker, for
bench_serve's ``--server granian``: the same app, only the HTTP server differs.

    python -m bench.serve_granian path/to/cdp.yaml
"""

from __future__ import annotations

import os
import sys


def app_factory():
    from core.config import load_config
    from serve.app import build_app

    return build_app(load_config(os.environ["TESSERA_SERVE_CONFIG"]))


def main(config_path: str) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces

    from core.config import load_config

    os.environ["TESSERA_SERVE_CONFIG"] = config_path
    s = load_config(config_path).serve
    Granian("bench.serve_granian:app_factory", factory=True, address=s.host, port=s.port, interface=Interfaces.ASGI,
            workers=1, http=HTTPModes.http1, log_access=False, log_level="warning").serve()


if __name__ == "__main__":
    main(sys.argv[1])
