"""Running the app under uvicorn: one process (the live state and the log's group commit live
in it), graceful shutdown on SIGTERM / Ctrl-C (in-flight requests finish, the open log segment
is landed), access logs without paths (a profile's path holds a person's id)."""

from __future__ import annotations

import uvicorn

from core.config import Config
from serve.app import build_app


def run(config: Config, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    app = build_app(config)
    uvicorn.run(app, host=host or config.serve.host, port=port or config.serve.port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=10, proxy_headers=True, server_header=False)
