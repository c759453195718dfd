"""``hearth openclaw connect``: tell Hearth where the OpenClaw gateway is and print (or write) its settings.

Registered on the ``hearth`` app by cluster/cli.py (docs/openclaw.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cluster import local
from cluster.cli_client import console, fail

openclaw_app = typer.Typer(help="Chat through an OpenClaw gateway (docs/openclaw.md).", no_args_is_help=True)


@openclaw_app.command("connect")
def openclaw_connect(
    url: Annotated[str, typer.Option(help="The gateway's address, e.g. http://127.0.0.1:18789")],
    token_file: Annotated[Path, typer.Option(help="A file holding the gateway's gateway.auth.token")],
    sidecar: Annotated[str, typer.Option(help="Where the plugin reaches Hearth's sidecar")] = "http://127.0.0.1:8765",
    slack_channel: Annotated[list[str] | None, typer.Option(
        help="A Slack channel id (C…) a project's [notify] names; repeat for more. Adds the Slack part.")] = None,
    slack_bot_token_file: Annotated[Path | None, typer.Option(help="A file with the Slack app's xoxb- token")] = None,
    slack_signing_secret_file: Annotated[Path | None, typer.Option(
        help="A file with the Slack app's signing secret")] = None,
    write: Annotated[Path | None, typer.Option(
        help="Merge the printed settings into this openclaw.json (kept 0600) instead of only printing them")] = None,
) -> None:
    """Tell Hearth where the gateway is (it then sends questions and approval cards there), and print
    (or, with --write, merge into the gateway's openclaw.json) the settings the gateway needs: the hearth
    plugin and, with --slack-channel, the Slack channel in HTTP (Events API) mode."""
    import httpx

    from cluster.api import PLUGIN_TOKEN_FILE
    from cluster.openclaw import GATEWAY_CONFIG_FILE, GATEWAY_TOKEN_FILE
    from cluster.private_files import ensure_token_file, write_private

    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        fail(f"--url {url!r}: give the gateway's http(s) address, e.g. http://127.0.0.1:18789")
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        fail(f"--token-file {token_file}: cannot read: {exc.strerror}")
    if not token:
        fail(f"--token-file {token_file}: the file is empty; it must hold the gateway's gateway.auth.token")
    state = local.state_dir()
    secret = state / GATEWAY_TOKEN_FILE
    write_private(secret, token + "\n")
    (state / GATEWAY_CONFIG_FILE).write_text(json.dumps({"url": url.rstrip("/")}) + "\n")
    plugin_token = state / PLUGIN_TOKEN_FILE
    ensure_token_file(plugin_token)
    try:
        ready = httpx.get(url.rstrip("/") + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        ready = False
    console.print(f"· gateway {url}: " + ("ready" if ready else "[yellow]not answering /readyz yet[/yellow] "
                                          "(messages wait in the outbox until it does)"))
    console.print(f"· wrote {state / GATEWAY_CONFIG_FILE} and {secret} (0600)")
    plugin = Path(__file__).resolve().parents[1] / "deploy" / "openclaw" / "hearth-plugin"
    from cluster.slack import gateway_settings, merge_config

    settings = gateway_settings(plugin_dir=plugin, sidecar=sidecar, plugin_token_file=plugin_token,
                                slack_channels=slack_channel or [], bot_token_file=slack_bot_token_file,
                                signing_secret_file=slack_signing_secret_file, reveal_secrets=write is not None)
    if write is not None:
        current = json.loads(write.read_text()) if write.exists() and write.read_text().strip() else {}
        write_private(write, json.dumps(merge_config(current, settings), indent=2) + "\n")
        console.print(f"· merged the hearth plugin{' and Slack' if slack_channel else ''} into {write}; "
                      "restart the gateway")
    else:
        console.print("In the gateway's openclaw.json" + (" (JSON: no comments there)" if slack_channel else "")
                      + ", load the plugin with:")
        console.print(json.dumps(settings, indent=2), highlight=False, soft_wrap=True)
    console.print("Then restart the sidecar so it starts sending: hearth down && hearth up")

