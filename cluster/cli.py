"""The ``hearth`` command (typer + rich). A thin client of the sidecar, plus local set-up commands.

Exit codes: 0 success, 1 a task ended failed/cancelled (``submit --follow``), 2 bad input
(a bad PRD, an unknown key in hearth.toml, an unknown task), 3 the cluster is not reachable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cluster import cli_admin, cli_node, cli_openclaw
from cluster.cli_client import Client, console, fail, text_table
from cluster.cli_deliverables import artifact_line, register, show_deliverables
from cluster.cli_tokens import token_app

if TYPE_CHECKING:
    from cluster.store import TaskRow

# git, the PRD parser, hearth.toml's models and the store are imported by the commands that use them:
# `hearth tasks` and the other client commands then load only typer, rich, httpx and the client.

app = typer.Typer(help="Hearth: turn PRDs into finished work on your own boxes.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command()(cli_node.up)
app.command()(cli_node.down)
app.add_typer(cli_node.node_app, name="node")
app.add_typer(cli_node.image_app, name="image")
app.add_typer(cli_admin.model_app, name="model")
app.add_typer(cli_admin.docker_app, name="docker")
app.add_typer(cli_openclaw.openclaw_app, name="openclaw")
app.add_typer(token_app, name="token")


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


def _project_for(prd: Path) -> Path:
    import git

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
    from agent.config import parse_priority
    from cluster.repos import is_git_url

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
    from cluster.repos import is_git_url

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
    typer.echo(text_table(("id", "name", "project", "state", "priority", "step", "node", "attempts", "message"),
                          [(t["id"], t["name"], t["project"], t["state"], t["priority"], t["next_step"],
                            (t["node_id"] or "")[:12], t["attempts"], t["message"]) for t in rows]))


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
