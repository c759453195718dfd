"""``python -m cluster.api --address HOST:PORT --state-dir DIR [--host H] [--port P] [--config F]``: the sidecar
(``hearth up`` starts it so)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def serve(address: Annotated[str, typer.Option(help="Ray address of the head (host:port)")],
          state_dir: Annotated[Path, typer.Option(help="The head's state directory")],
          host: str = "127.0.0.1", port: int = 8765,
          config: Annotated[Path | None, typer.Option(help="The head configuration (default <state-dir>/head.toml)")]
          = None) -> None:
    """Serve the sidecar: connect to Ray, find (or create) the scheduler, start chat delivery if set up."""
    import ray
    import uvicorn

    from cluster.api import PLUGIN_TOKEN_FILE, create_app
    from cluster.head_config import load_head_config
    from cluster.openclaw import notifier_from_state_dir
    from cluster.private_files import ensure_token_file
    from cluster.scheduler import get_or_create_scheduler
    from cluster.scheduler_client import RaySchedulerClient

    policy = load_head_config(config, state_dir).scheduler
    token = (state_dir / "token").read_text().strip()
    plugin_token = ensure_token_file(state_dir / PLUGIN_TOKEN_FILE)
    ray.init(address=address, namespace="hearth", logging_level=logging.WARNING, log_to_driver=False)
    scheduler = RaySchedulerClient(get_or_create_scheduler(str(state_dir), policy.model_dump()))
    app = create_app(scheduler, state_dir / "hearth.db", token, plugin_token=plugin_token,
                     notifier=notifier_from_state_dir(state_dir))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    typer.run(serve)
