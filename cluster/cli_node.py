"""``hearth up``, ``hearth down``, ``hearth node …`` and ``hearth image build``: this machine as a head or a box.

Registered on the ``hearth`` app by cluster/cli.py. Ray, psutil and the node modules are imported by
the commands that use them, so loading the CLI for a client command stays fast.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from cluster import local
from cluster.cli_client import console, fail

node_app = typer.Typer(help="This machine as a Ray node.", no_args_is_help=True)
image_app = typer.Typer(help="The guest image of the qemu sandbox.", no_args_is_help=True)

HostOption = Annotated[str | None, typer.Option(
    help="Address Ray and the sidecar listen on, and boxes dial (default 127.0.0.1: this machine only)")]
SlotsOption = Annotated[int | None, typer.Option(min=0, help="Tasks this node runs at once (0: none)")]
ConfigOption = Annotated[Path | None, typer.Option(help="Head configuration (default <state dir>/head.toml)")]
BlockOption = Annotated[bool, typer.Option("--block", help="Stay in the foreground (systemd)")]


def _start_head(*, api_port: int | None, host: str | None, slots: int | None, ray_port: int | None,
                config: Path | None, block: bool, default_ray_port: int, token_file: Path | None = None) -> None:
    from agent.config import ConfigError
    from cluster.head_config import load_head_config
    from cluster.node_join import JoinError, box_name, install_token
    from cluster.node_start import supervise_head

    try:
        head = load_head_config(config, local.state_dir()).head
        if token_file is not None:  # a token made beforehand (ray up copies one file to every box)
            install_token(local.state_dir(), token_file, box_name())
    except ConfigError as exc:
        fail(str(exc))
        return
    except JoinError as exc:
        fail(str(exc), exc.exit_code)
        return
    options: dict[str, Any] = {
        "api_port": api_port or head.api_port, "host": host or head.host,
        "slots": head.slots if slots is None else slots,
        "ray_port": ray_port or head.ray_port or default_ray_port, "config": config}

    def start() -> local.UpInfo:
        return local.up(**options, progress=lambda m: console.print(f"· {m}", highlight=False))

    try:
        info = start()
    except RuntimeError as exc:
        fail(str(exc), 3)
        return
    console.print(f"Hearth is up: sidecar {info.api_url}, Ray {info.ray_address}", highlight=False)
    console.print(f"Web page: {info.api_url}/ui/ (log in with the token in {local.token_path()})", soft_wrap=True)
    console.print(f"Boxes join with: hearth node start --address {info.ray_address} --token-file FILE "
                  f"(FILE: a copy of {Path(info.state_dir) / 'ray-token'})", highlight=False, soft_wrap=True)
    if block:
        raise typer.Exit(supervise_head(info, start, progress=lambda m: console.print(f"· {m}")))


def up(port: Annotated[int | None, typer.Option(help="The sidecar's port (default 8765)")] = None,
       host: HostOption = None, slots: SlotsOption = None,
       ray_port: Annotated[int | None, typer.Option(help="Ray's port (default: a free one)")] = None,
       config: ConfigOption = None, block: BlockOption = False) -> None:
    """Start the head here: Ray, the scheduler and the sidecar (or find the running one; if only the
    sidecar died, only the sidecar is started again)."""
    _start_head(api_port=port, host=host, slots=slots, ray_port=ray_port, config=config, block=block,
                default_ray_port=0)


def down() -> None:
    """Stop what `hearth up` started (by PID), and this node's embedded model server."""
    local.down(progress=lambda m: console.print(f"· {m}"))


@image_app.command("build")
def image_build(force: Annotated[bool, typer.Option(help="Rebuild even if the recipe is unchanged")] = False,
                ) -> None:
    """Build the micro-VM guest image from Debian packages (cached; rebuilt when the recipe changes)."""
    from agent.sandbox.image import build_guest_image

    info = build_guest_image(progress=lambda m: console.print(f"· {m}", highlight=False), force=force)
    console.print(f"guest image ready: {info.disk} (recipe {info.recipe_hash[:12]})")


@node_app.command("inventory")
def node_inventory() -> None:
    """Print what NVML sees here (GPUs, VRAM) as JSON; a CPU-only node where NVML is absent."""
    from cluster.nodes import inventory

    typer.echo(inventory().model_dump_json(indent=2))


@node_app.command("start")
def node_start(
    head: Annotated[bool, typer.Option("--head", help="Start the head (the same as `hearth up`)")] = False,
    address: Annotated[str | None, typer.Option(help="HOST:PORT of the head to join")] = None,
    host: HostOption = None,
    port: Annotated[int | None, typer.Option(help="The head's Ray port (default 6379)")] = None,
    api_port: Annotated[int | None, typer.Option(help="The head's sidecar port (default 8765)")] = None,
    slots: SlotsOption = None, config: ConfigOption = None,
    token_file: Annotated[Path | None, typer.Option(
        help="The cluster token: on a box, a copy of the head's <state dir>/ray-token; on the head, a token "
             "made beforehand (both kept as <state dir>/ray-token)")] = None,
    timeout: Annotated[float, typer.Option(help="A box: seconds to wait for the head")] = 30.0,
    block: BlockOption = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the ray start command only")] = False,
) -> None:
    """One command per box: `--head` starts Ray, the scheduler and the sidecar; `--address HEAD:PORT`
    checks the head (reachable, token accepted, same Hearth and Ray) and joins it."""
    from cluster.node_join import JoinError
    from cluster.node_start import block_box, join
    from cluster.ray_start import head_ray_command, ray_temp_dir, worker_ray_command

    if head == bool(address):
        fail("give exactly one of --head or --address HOST:PORT")
    if dry_run:
        temp_dir = ray_temp_dir(local.state_dir())
        command = (head_ray_command(host=host or "127.0.0.1", port=port or 6379,
                                    slots=(os.cpu_count() or 1) if slots is None else slots, temp_dir=temp_dir)
                   if head else worker_ray_command(address=str(address), host=host or "<this box>", slots=slots,
                                                   temp_dir=temp_dir))
        typer.echo(" ".join(shlex.quote(part) for part in command))
        return
    if head:
        _start_head(api_port=api_port, host=host, slots=slots, ray_port=port, config=config, block=block,
                    default_ray_port=6379, token_file=token_file)
        return
    try:
        info, proc = join(str(address), host=host, slots=slots, token_file=token_file, timeout_s=timeout,
                          progress=lambda m: console.print(f"· {m}", highlight=False))
    except JoinError as exc:
        fail(str(exc), exc.exit_code)
        return
    console.print(f"joined the head at {info.head_address} as {info.host} (Ray pid {info.ray_pid})",
                  highlight=False)
    if block:
        raise typer.Exit(block_box(proc))

