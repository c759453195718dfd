"""The ``hearth`` command (typer + rich). A thin client of the sidecar, plus local set-up commands.

Exit codes: 0 success, 1 a task ended failed/cancelled (``submit --follow``), 2 bad input
(a bad PRD, an unknown key in hearth.toml, an unknown task), 3 the cluster is not reachable.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import git
import httpx
import typer
from rich.console import Console
from rich.table import Table

from agent.config import ConfigError, parse_priority
from agent.events import Event
from agent.prd import PrdError, load_prd
from agent.project import ProjectError, checkpoint_commits, init_project, task_branch
from cluster import cli_admin, local
from cluster.cli_client import SidecarClient, SidecarError
from cluster.cli_deliverables import artifact_line, register, show_deliverables
from cluster.cli_tokens import token_app
from cluster.nodes import inventory
from cluster.repos import is_git_url
from cluster.store import TaskRow

app = typer.Typer(help="Hearth: turn PRDs into finished work on your own boxes.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Client(SidecarClient):
    """The sidecar, reached with the token ``hearth up`` wrote; its errors end the command."""

    def __init__(self) -> None:
        info = local.read_up()
        if info is None:
            fail("Hearth is not running here; start it with `hearth up`", 3)
        assert info is not None
        super().__init__(info.api_url, local.ensure_token(local.state_dir()))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return super().request(method, path, **kwargs)
        except SidecarError as exc:
            fail(str(exc), exc.exit_code)

    def stream_events(self, task_id: str, follow: bool = True) -> Iterator[Event]:
        try:
            yield from super().stream_events(task_id, follow)
        except SidecarError as exc:
            fail(str(exc), exc.exit_code)


@app.command()
def init(path: Annotated[Path, typer.Argument()] = Path("."),
         name: Annotated[str | None, typer.Option(help="Project name (default: directory name)")] = None,
         check: Annotated[str | None, typer.Option(help="Check command that accepts a step")] = None,
         sandbox: Annotated[str | None, typer.Option(help="bwrap | qemu | docker")] = None,
         model: Annotated[str | None, typer.Option(help="Default model spec")] = None,
         approval: Annotated[str | None, typer.Option(help="each-step | final | none")] = None) -> None:
    """Make or adopt a git repo as a Hearth project (writes hearth.toml, Ralph TUI config, .gitignore)."""
    overrides: dict[str, object] = {k: v for k, v in
                 {"check": check, "sandbox": sandbox, "model": model, "approval": approval}.items() if v}
    try:
        project = init_project(path, name=name, config=overrides)
    except (ConfigError, ProjectError, ValueError) as exc:
        fail(str(exc))
        return
    console.print(f"project [bold]{project.config.name}[/bold] ready at {project.path}")


@app.command()
def plan(prd: Path, as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Print the steps a PRD would run, in order, without running anything."""
    try:
        task_plan = load_prd(prd)
    except PrdError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(task_plan.plan_json(), indent=2))
        return
    table = Table(title=f"{task_plan.name} ({task_plan.format})")
    for column in ("#", "id", "title", "depends on"):
        table.add_column(column)
    for number, step in enumerate(task_plan.steps, 1):
        table.add_row(str(number), step.id, step.title, ", ".join(step.depends_on))
    console.print(table)
    if task_plan.skipped:
        console.print(f"already passing (skipped): {', '.join(task_plan.skipped)}")


HostOption = Annotated[str | None, typer.Option(
    help="Address Ray and the sidecar listen on, and boxes dial (default 127.0.0.1: this machine only)")]
SlotsOption = Annotated[int | None, typer.Option(min=0, help="Tasks this node runs at once (0: none)")]
ConfigOption = Annotated[Path | None, typer.Option(help="Head configuration (default <state dir>/head.toml)")]
BlockOption = Annotated[bool, typer.Option("--block", help="Stay in the foreground (systemd)")]


def _start_head(*, api_port: int | None, host: str | None, slots: int | None, ray_port: int | None,
                config: Path | None, block: bool, default_ray_port: int, token_file: Path | None = None) -> None:
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


@app.command()
def up(port: Annotated[int | None, typer.Option(help="The sidecar's port (default 8765)")] = None,
       host: HostOption = None, slots: SlotsOption = None,
       ray_port: Annotated[int | None, typer.Option(help="Ray's port (default: a free one)")] = None,
       config: ConfigOption = None, block: BlockOption = False) -> None:
    """Start the head here: Ray, the scheduler and the sidecar (or find the running one; if only the
    sidecar died, only the sidecar is started again)."""
    _start_head(api_port=port, host=host, slots=slots, ray_port=ray_port, config=config, block=block,
                default_ray_port=0)


@app.command()
def down() -> None:
    """Stop what `hearth up` started (by PID), and this node's embedded model server."""
    local.down(progress=lambda m: console.print(f"· {m}"))


def _project_for(prd: Path) -> Path:
    try:
        return Path(git.Repo(prd.resolve().parent, search_parent_directories=True).working_tree_dir or ".")
    except git.InvalidGitRepositoryError:
        fail(f"{prd}: not inside a git repository; pass --project or run `hearth init`")
        raise


@app.command()
def submit(prd: Path,
           project: Annotated[str | None, typer.Option(
               help="Project repo: a directory on the head or a git URL (default: the PRD's repo); "
                    "with a URL, PRD is a path inside that repository")] = None,
           priority: Annotated[str | None, typer.Option(help="0-100 or low|normal|high|urgent")] = None,
           model: Annotated[str | None, typer.Option(help="Model spec, e.g. embedded:smollm2-135m")] = None,
           follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f")] = False) -> None:
    """Submit a PRD (Ralph prd.json, Ralph markdown or beads JSONL) as a task."""
    if priority is not None:
        try:
            parse_priority(priority)
        except ValueError as exc:
            fail(str(exc))
    if project is not None and is_git_url(project):
        source, prd_path = project, str(prd)  # the head reads the PRD from the repository
    else:
        if not prd.exists():
            fail(f"{prd}: no such file")
        source = str((Path(project) if project else _project_for(prd)).resolve())
        prd_path = str(prd.resolve())
    task = Client().request("POST", "/v1/tasks", json={
        "project_path": source, "prd_path": prd_path, "priority": priority, "model": model})
    console.print(f"submitted [bold]{task['id']}[/bold]: {task['name']} "
                  f"({len(task['spec']['plan']['steps'])} steps, priority {task['priority']})")
    for warning in task.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if follow:
        raise typer.Exit(_follow(task["id"]))


_DESCRIBE: dict[str, Callable[[Any], str]] = {
    "step_started": lambda e: f"[bold cyan]▶ step {e.index + 1}/{e.total} {e.step_id}[/]: {e.title}",
    "agent_action": lambda e: f"   · turn {e.turn}: {e.tool} {e.summary}",
    "model_turn": lambda e: (f"   [dim]· model: {e.prompt_tokens:,} + {e.completion_tokens:,} tokens[/]"
                             + (" [yellow](reply cut at max_tokens)[/]" if e.finish_reason == "length" else "")),
    "check_ran": lambda e: f"   {'[green]✔ check passed' if e.passed else '[yellow]✘ check failed'}[/]",
    "checkpoint_ready": lambda e: (f"   [green]● checkpoint[/] {e.commit[:10]} "
                                   f"({', '.join(e.files_changed) or 'no files'})"
                                   + (" — [magenta]awaiting approval[/]" if e.needs_approval else "")
                                   + "".join(f"\n     artifact {artifact_line(a.model_dump())}"
                                             for a in e.artifacts)),
    "build_ran": lambda e: (f"   {'[green]✔ build passed' if e.passed else '[yellow]✘ build failed'}[/] "
                            f"({e.duration_s:.1f} s)"),
    "branch_finished": lambda e: f"   {'[green]' if e.ok else '[red]'}branch {e.action}:[/] {e.message}",
    "clarification_requested": lambda e: (f"   [magenta]? question:[/] {e.question}  "
                                          f"(answer: hearth answer {e.task_id} \"…\")"),
    "task_placed": lambda e: f"[dim]placed on node {e.node_id[:12]} (attempt {e.attempt_no})[/]",
    "task_completed": lambda e: f"[bold green]✔ completed[/] on branch {e.branch}",
    "task_failed": lambda e: f"[bold red]✘ failed[/] ({e.reason}): {e.message}",
    "attempt_ended": lambda e: f"[yellow]attempt ended: {e.reason}[/] {e.message}",
    "task_requeued": lambda e: (f"[yellow]re-queued ({e.reason}), from step {e.from_step}"
                                + (f"; earlier commits kept at {e.kept_ref}" if e.kept_ref else "") + "[/]"),
}
"""How ``hearth logs`` shows each kind of event (others: their kind, dimmed)."""


def _describe(event: Any) -> str:
    describe = _DESCRIBE.get(event.kind)
    if describe is None or (event.kind == "attempt_ended" and event.reason == "completed"):
        return f"[dim]{event.kind}[/]"
    return describe(event)


def _follow(task_id: str) -> int:
    client = Client()
    for event in client.stream_events(task_id):
        console.print(_describe(event), highlight=False)
    task = TaskRow.model_validate(client.request("GET", f"/v1/tasks/{task_id}"))
    if task.state == "completed":
        _print_result(task)
        return 0
    console.print(f"{task_id} ended {task.state.value}: {task.message}")
    return 1


def _print_result(task: TaskRow) -> None:
    spec, branch = task.spec, task_branch(task.id)
    console.print(f"\n[bold]branch[/bold] {branch} in {spec.project_path}")
    if is_git_url(spec.project_path) or not Path(spec.project_path).is_dir():
        return  # pushed there by the head; not a directory this CLI can read
    for commit, subject in checkpoint_commits(Path(spec.project_path), task.id, spec.base_commit):
        console.print(f"  {commit[:10]} {subject}")
    if spec.prd_relpath and spec.plan.format == "prd-json":
        prd = json.loads(git.Repo(spec.project_path).git.show(f"{branch}:{spec.prd_relpath}"))
        console.print(f"[bold]{spec.prd_relpath}[/bold] on {branch}:")
        for story in prd["userStories"]:
            mark = "[green]passes: true[/]" if story.get("passes") else "[red]passes: false[/]"
            console.print(f"  {story['id']} {story['title']}: {mark}")


image_app = typer.Typer(help="The guest image of the qemu sandbox.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(cli_admin.model_app, name="model")
app.add_typer(cli_admin.docker_app, name="docker")


@image_app.command("build")
def image_build(force: Annotated[bool, typer.Option(help="Rebuild even if the recipe is unchanged")] = False,
                ) -> None:
    """Build the micro-VM guest image from Debian packages (cached; rebuilt when the recipe changes)."""
    from agent.sandbox.image import build_guest_image

    info = build_guest_image(progress=lambda m: console.print(f"· {m}", highlight=False), force=force)
    console.print(f"guest image ready: {info.disk} (recipe {info.recipe_hash[:12]})")


openclaw_app = typer.Typer(help="Chat through an OpenClaw gateway (docs/openclaw.md).", no_args_is_help=True)
app.add_typer(openclaw_app, name="openclaw")


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


app.add_typer(token_app, name="token")
node_app = typer.Typer(help="This machine as a Ray node.", no_args_is_help=True)
app.add_typer(node_app, name="node")


@node_app.command("inventory")
def node_inventory() -> None:
    """Print what NVML sees here (GPUs, VRAM) as JSON; a CPU-only node where NVML is absent."""
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
    from cluster.node_start import block_box, head_ray_command, join, ray_temp_dir, worker_ray_command

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


@app.command()
def nodes() -> None:
    """Nodes: GPUs, VRAM used/free, loaded models, running tasks."""
    table = Table()
    for column in ("node", "alive", "address", "gpus", "vram free/total MiB", "models", "slots", "running"):
        table.add_column(column)
    refused = []
    for n in Client().request("GET", "/v1/nodes"):
        gpus = ", ".join(g["name"] for g in n["gpus"]) or "cpu only"
        vram = f"{n['vram_free_mib']}/{n['vram_total_mib']}" if n["gpus"] else "-"
        models = ", ".join(
            m["model"] + (f" (GPU {m['gpu_index']}, {m['vram_mib']} MiB)" if m.get("gpu_index") is not None else "")
            for m in n.get("models", []))
        table.add_row(n["node_id"][:12], "yes" if n["alive"] else "no", n["address"], gpus, vram,
                      models or "-", str(n["slots"]), ", ".join(n["running"]))
        if n.get("refused") and n["alive"]:
            refused.append(f"node {n['node_id'][:12]} ({n['address']}) gets no tasks: it {n['refused']}")
    console.print(table)
    for line in refused:
        console.print(f"[yellow]{line}[/yellow]", highlight=False, soft_wrap=True)


@app.command()
def tasks(state: Annotated[str | None, typer.Option(help="Only tasks in this state")] = None) -> None:
    """List tasks with their state, priority and placement."""
    rows = Client().request("GET", "/v1/tasks", params={"state": state} if state else None)
    table = Table()
    for column in ("id", "name", "project", "state", "priority", "step", "node", "attempts", "message"):
        table.add_column(column)
    for t in rows:
        table.add_row(t["id"], t["name"], t["project"], t["state"], str(t["priority"]), str(t["next_step"]),
                      (t["node_id"] or "")[:12], str(t["attempts"]), t["message"])
    console.print(table)


@app.command()
def show(task_id: str) -> None:
    """Show one task: state, steps and, once completed, its branch and checkpoints."""
    raw = Client().request("GET", f"/v1/tasks/{task_id}")
    task = TaskRow.model_validate(raw)
    console.print(f"[bold]{task.id}[/bold] {task.name} — {task.state.value} (priority {task.priority})")
    if task.message:
        console.print(task.message)
    usage = raw.get("usage") or {}
    by_step = usage.get("steps", {})
    for number, step in enumerate(task.spec.plan.steps, 1):
        done = "✔" if number <= task.next_step else " "
        spent = by_step.get(step.id)
        cost = f"  [dim]{_tokens(spent)}[/]" if spent else ""
        console.print(f"  {done} {step.id} {step.title}{cost}")
    if usage.get("turns"):
        console.print(f"model: {task.model}, {_tokens(usage)}")
    if task.state == "completed":
        _print_result(task)
    show_deliverables(Client(), console, task.model_dump(mode="json"))


def _tokens(usage: dict[str, Any]) -> str:
    return (f"{usage['turns']} turns, {usage['prompt_tokens']:,} prompt + "
            f"{usage['completion_tokens']:,} completion tokens")


@app.command()
def logs(task_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False) -> None:
    """Print a task's events; with -f keep following until it ends."""
    for event in Client().stream_events(task_id, follow=follow):
        console.print(_describe(event), highlight=False)


@app.command()
def transcript(task_id: str, step: Annotated[str | None, typer.Argument(help="A step id, e.g. US-001")] = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print the stored JSON")] = False) -> None:
    """A step's conversation with the model and its check output (kept on the head); no STEP: list steps."""
    client = Client()
    if step is None:
        for entry in client.request("GET", f"/v1/tasks/{task_id}/transcripts"):
            attempts = ", ".join(str(a) for a in entry["attempts"])
            console.print(f"{entry['step_id']}  (attempt {attempts})", highlight=False)
        return
    record = client.request("GET", f"/v1/tasks/{task_id}/transcripts/{step}")
    if as_json:
        typer.echo(json.dumps(record, indent=1))
        return
    for attempt in record["attempts"]:
        console.print(f"[bold]── {task_id} {step}, attempt {attempt['attempt']}[/]", highlight=False)
        for message in attempt["messages"]:
            calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})"
                              for c in message.get("tool_calls") or [])
            text = (message.get("content") or "") + (f" → {calls}" if calls else "")
            console.print(f"{message['role']}: {text}", highlight=False, markup=False)
    for check in record["checks"]:
        console.print(f"[bold]── check run {check['run']} (attempt {check['attempt']})[/]", highlight=False)
        console.print(check["output"], highlight=False, markup=False)


@app.command()
def cancel(task_id: str) -> None:
    """Cancel a task (its running attempt is stopped)."""
    console.print(f"{Client().request('POST', f'/v1/tasks/{task_id}/cancel')['id']} cancelled")


@app.command()
def restart(task_id: str) -> None:
    """Re-queue a failed or cancelled task from step 0."""
    console.print(f"{Client().request('POST', f'/v1/tasks/{task_id}/restart')['id']} re-queued")


@app.command()
def priority(task_id: str, value: str) -> None:
    """Change a task's priority (clipped to its project's cap)."""
    task = Client().request("POST", f"/v1/tasks/{task_id}/priority", json={"priority": value})
    console.print(f"{task['id']} priority {task['priority']}")


@app.command()
def answer(task_id: str, text: str, who: str = "cli") -> None:
    """Answer a task's question; it resumes with your words."""
    Client().request("POST", f"/v1/tasks/{task_id}/answer", json={"text": text, "who": who})
    console.print(f"answered {task_id}")


@app.command()
def approve(task_id: str, who: str = "cli",
            finish: Annotated[str | None, typer.Option(
                help="At the final checkpoint: keep | merge | push the branch (default: hearth.toml [finish])")
            ] = None) -> None:
    """Approve a task's checkpoint (the final one also finishes the branch)."""
    body: dict[str, Any] = {"decision": "approve", "who": who}
    if finish is not None:
        body["finish"] = finish
    Client().request("POST", f"/v1/tasks/{task_id}/decision", json=body)
    console.print(f"approved {task_id}" + (f" (finish: {finish})" if finish else ""))


@app.command()
def reject(task_id: str, reason: str, who: str = "cli") -> None:
    """Reject a checkpoint: roll back and redo the step with your reason as feedback."""
    Client().request("POST", f"/v1/tasks/{task_id}/decision",
                     json={"decision": "reject", "reason": reason, "who": who})
    console.print(f"rejected {task_id}")


@app.command()
def inbox() -> None:
    """Tasks waiting for a person (an answer or an approval)."""
    for t in Client().request("GET", "/v1/approvals"):
        console.print(f"{t['id']} {t['state']}: {t['waiting_for'] or ''}")


register(app, Client, console, fail)


if __name__ == "__main__":
    app()
