"""The ``hearth`` command (typer + rich). A thin client of the sidecar, plus local set-up commands.

The client commands (``hearth tasks``…) must print in well under 300 ms, so this module imports only
typer, rich and the sidecar client at the top; git, the PRD and project code, the store's models and
node inventories are imported inside the commands that use them.

Exit codes: 0 success, 1 a task ended failed/cancelled (``submit --follow``), 2 bad input
(a bad PRD, an unknown key in hearth.toml, an unknown task), 3 the cluster is not reachable.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cluster import cli_admin, local
from cluster.cli_client import SidecarClient, SidecarError
from cluster.cli_tokens import token_app

if TYPE_CHECKING:
    from agent.events import Event
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
    from agent.config import ConfigError
    from agent.project import ProjectError, init_project

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
    from agent.prd import PrdError, load_prd

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


@app.command()
def up(port: int = 8765, slots: Annotated[int | None, typer.Option(help="Tasks this node runs at once")] = None,
       ) -> None:
    """Start a local head: Ray, the scheduler and the sidecar (or find the running one)."""
    try:
        info = local.up(api_port=port, slots=slots, progress=lambda m: console.print(f"· {m}"))
    except RuntimeError as exc:
        fail(str(exc), 3)
        return
    console.print(f"Hearth is up: sidecar {info.api_url}, Ray {info.ray_address}")
    console.print(f"Web page: {info.api_url}/ui/ (log in with the token in {local.token_path()})", soft_wrap=True)


@app.command()
def down() -> None:
    """Stop what `hearth up` started (by PID), and this node's embedded model server."""
    local.down(progress=lambda m: console.print(f"· {m}"))


def _project_for(prd: Path) -> Path:
    import git

    try:
        return Path(git.Repo(prd.resolve().parent, search_parent_directories=True).working_tree_dir or ".")
    except git.InvalidGitRepositoryError:
        fail(f"{prd}: not inside a git repository; pass --project or run `hearth init`")
        raise


@app.command()
def submit(prd: Path,
           project: Annotated[Path | None, typer.Option(help="Project repo (default: the PRD's repo)")] = None,
           priority: Annotated[str | None, typer.Option(help="0-100 or low|normal|high|urgent")] = None,
           model: Annotated[str | None, typer.Option(help="Model spec, e.g. embedded:smollm2-135m")] = None,
           follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f")] = False) -> None:
    """Submit a PRD (Ralph prd.json, Ralph markdown or beads JSONL) as a task."""
    from agent.config import parse_priority

    if not prd.exists():
        fail(f"{prd}: no such file")
    if priority is not None:
        try:
            parse_priority(priority)
        except ValueError as exc:
            fail(str(exc))
    project_path = project or _project_for(prd)
    task = Client().request("POST", "/v1/tasks", json={
        "project_path": str(project_path.resolve()), "prd_path": str(prd.resolve()),
        "priority": priority, "model": model})
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
                                   + (" — [magenta]awaiting approval[/]" if e.needs_approval else "")),
    "clarification_requested": lambda e: (f"   [magenta]? question:[/] {e.question}  "
                                          f"(answer: hearth answer {e.task_id} \"…\")"),
    "task_placed": lambda e: f"[dim]placed on node {e.node_id[:12]} (attempt {e.attempt_no})[/]",
    "task_completed": lambda e: f"[bold green]✔ completed[/] on branch {e.branch}",
    "task_failed": lambda e: f"[bold red]✘ failed[/] ({e.reason}): {e.message}",
    "attempt_ended": lambda e: f"[yellow]attempt ended: {e.reason}[/] {e.message}",
    "task_requeued": lambda e: f"[yellow]re-queued ({e.reason}), from step {e.from_step}[/]",
}
"""How ``hearth logs`` shows each kind of event (others: their kind, dimmed)."""


def _describe(event: Any) -> str:
    describe = _DESCRIBE.get(event.kind)
    if describe is None or (event.kind == "attempt_ended" and event.reason == "completed"):
        return f"[dim]{event.kind}[/]"
    return describe(event)


def _follow(task_id: str) -> int:
    from cluster.store import TaskRow

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
    import git

    from agent.project import checkpoint_commits, task_branch

    spec, branch = task.spec, task_branch(task.id)
    console.print(f"\n[bold]branch[/bold] {branch} in {spec.project_path}")
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
) -> None:
    """Tell Hearth where the gateway is (it then sends questions and approval cards there), and print
    the settings the gateway's hearth plugin needs."""
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
    console.print("In the gateway's openclaw.json, load the plugin with:")
    console.print(json.dumps({"plugins": {"load": {"paths": [str(plugin)]}, "entries": {"hearth": {
        "enabled": True, "config": {"sidecarUrl": sidecar, "tokenFile": str(plugin_token)}}}}}, indent=2),
        highlight=False, soft_wrap=True)
    console.print("Then restart the sidecar so it starts sending: hearth down && hearth up")


app.add_typer(token_app, name="token")
node_app = typer.Typer(help="This machine as a Ray node.", no_args_is_help=True)
app.add_typer(node_app, name="node")


@node_app.command("inventory")
def node_inventory() -> None:
    """Print what NVML sees here (GPUs, VRAM) as JSON; a CPU-only node where NVML is absent."""
    from cluster.nodes import inventory

    typer.echo(inventory().model_dump_json(indent=2))


@node_app.command("start")
def node_start(head: Annotated[bool, typer.Option("--head", help="Start a head node")] = False,
               address: Annotated[str | None, typer.Option(help="HOST:PORT of the head to join")] = None,
               port: int = 6379, slots: Annotated[int | None, typer.Option(help="Tasks at once")] = None,
               dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command only")] = False,
               ) -> None:
    """`ray start` with this node's GPUs, VRAM and labels (same command on every box)."""
    from cluster.nodes import inventory, ray_start_args

    if head == bool(address):
        fail("give exactly one of --head or --address HOST:PORT")
    command = ["ray", "start", *ray_start_args(inventory(with_models=False), slots=slots), "--disable-usage-stats"]
    command += ["--head", f"--port={port}", "--include-dashboard=false"] if head else [f"--address={address}"]
    typer.echo(" ".join(shlex.quote(part) for part in command))
    if not dry_run:
        raise typer.Exit(subprocess.call(command))


@app.command()
def nodes() -> None:
    """Nodes: GPUs, VRAM used/free, loaded models, running tasks."""
    table = Table()
    for column in ("node", "alive", "address", "gpus", "vram free/total MiB", "models", "slots", "running"):
        table.add_column(column)
    for n in Client().request("GET", "/v1/nodes"):
        gpus = ", ".join(g["name"] for g in n["gpus"]) or "cpu only"
        vram = f"{n['vram_free_mib']}/{n['vram_total_mib']}" if n["gpus"] else "-"
        models = ", ".join(
            m["model"] + (f" (GPU {m['gpu_index']}, {m['vram_mib']} MiB)" if m.get("gpu_index") is not None else "")
            for m in n.get("models", []))
        table.add_row(n["node_id"][:12], "yes" if n["alive"] else "no", n["address"], gpus, vram,
                      models or "-", str(n["slots"]), ", ".join(n["running"]))
    console.print(table)


@app.command()
def tasks(state: Annotated[str | None, typer.Option(help="Only tasks in this state")] = None) -> None:
    """List tasks with their state, priority and placement."""
    rows = Client().request("GET", "/v1/tasks", params={"state": state} if state else None)
    table = Table()
    for column in ("id", "name", "project", "state", "priority", "step", "node", "attempts"):
        table.add_column(column)
    for t in rows:
        table.add_row(t["id"], t["name"], t["project"], t["state"], str(t["priority"]), str(t["next_step"]),
                      (t["node_id"] or "")[:12], str(t["attempts"]))
    console.print(table)


@app.command()
def show(task_id: str) -> None:
    """Show one task: state, steps and, once completed, its branch and checkpoints."""
    from cluster.store import TaskRow

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


def _tokens(usage: dict[str, Any]) -> str:
    return (f"{usage['turns']} turns, {usage['prompt_tokens']:,} prompt + "
            f"{usage['completion_tokens']:,} completion tokens")


@app.command()
def logs(task_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False) -> None:
    """Print a task's events; with -f keep following until it ends."""
    for event in Client().stream_events(task_id, follow=follow):
        console.print(_describe(event), highlight=False)


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
def approve(task_id: str, who: str = "cli") -> None:
    """Approve a task's checkpoint."""
    Client().request("POST", f"/v1/tasks/{task_id}/decision", json={"decision": "approve", "who": who})
    console.print(f"approved {task_id}")


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


if __name__ == "__main__":
    app()
