"""CLI commands for what a task leaves: ``hearth artifacts``, ``hearth diff``, and the approval card.

Registered on the main ``hearth`` app by cluster/cli.py (``register``); they talk to the sidecar
like every other command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cluster.cli_client import SidecarError, refused


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def artifact_line(a: dict[str, Any]) -> str:
    if a["kind"] == "image":
        where = f", pushed to {a['pushed_to']}" if a.get("pushed_to") else ""
        saved = (f", saved {human_size(a['size'])} sha256 {a['sha256'][:12]}" if a.get("stored")
                 else ", in the node's engine")
        return f"image {a['image_tag']} ({a['image_id'][:19]}{saved}{where})"
    return f"{a['name']} ({a['kind']}, {human_size(a['size'])}, sha256 {a['sha256'][:12]})"


def card_lines(pending: dict[str, Any], task_id: str) -> list[str]:
    """The approval card as text: what chat shows too (cluster/openclaw.py renders the same fields)."""
    final = " (final)" if pending.get("final") else ""
    lines = [f"checkpoint {pending['step_id']} at {pending['commit'][:10]}{final}", pending.get("diff_stat", "")]
    if pending.get("diff"):
        lines += ["", pending["diff"]]
        if pending.get("diff_truncated"):
            lines.append(f"… diff cut; the whole diff: hearth diff {task_id} {pending['step_id']}")
    if pending.get("check_summary"):
        lines += ["", "check output (tail):", pending["check_summary"]]
    if pending.get("build_summary"):
        lines += ["", "build output (tail):", pending["build_summary"]]
    if pending.get("artifacts"):
        lines += ["", "artifacts:"] + [f"  {artifact_line(a)}" for a in pending["artifacts"]]
        lines.append(f"  (download: hearth artifacts {task_id} --out DIR)")
    if pending.get("final"):
        lines += ["", f"approve and finish: hearth approve {task_id} --finish keep|merge|push"]
    return lines


def show_deliverables(c: Any, console: Console, task: dict[str, Any]) -> None:
    """``hearth show``'s part: the task's artifacts and, while it waits for one, the approval card."""
    task_id = task["id"]
    found = c.request("GET", f"/v1/tasks/{task_id}/artifacts")
    if found:
        console.print("[bold]artifacts[/bold]")
        for a in found:
            console.print(f"  {a['step_id']}: {artifact_line(a)}", highlight=False)
    if task["state"] == "awaiting_approval":
        pending = next((t["pending"] for t in c.request("GET", "/v1/approvals") if t["id"] == task_id), None)
        if pending and pending.get("kind") == "approval":
            console.print("\n".join(card_lines(pending, task_id)), highlight=False, markup=False)


def register(app: typer.Typer, client: Callable[[], Any], console: Console, fail: Callable[..., Any]) -> None:
    @app.command()
    def artifacts(task_id: str,
                  out: Annotated[Path | None, typer.Option(help="Download every stored artifact here")] = None,
                  step: Annotated[str | None, typer.Option(help="Only this step's artifacts")] = None,
                  extract: Annotated[bool, typer.Option(help="Unpack directory artifacts next to their tar")] = True,
                  ) -> None:
        """List a task's build artifacts; with --out, download them (sha256 checked)."""
        c = client()
        found = [a for a in c.request("GET", f"/v1/tasks/{task_id}/artifacts") if step in (None, a["step_id"])]
        if not found:
            console.print(f"{task_id} has no artifacts" + (f" from step {step}" if step else ""))
            return
        table = Table()
        for column in ("step", "name", "kind", "size", "sha256", "image"):
            table.add_column(column)
        for a in found:
            table.add_row(a["step_id"], a["name"], a["kind"], human_size(a["size"]) if a["stored"] else "-",
                          a["sha256"][:16] if a["stored"] else "-", a.get("image_tag") or "")
        console.print(table)
        if out is None:
            return
        latest = {a["name"]: a for a in found}  # one per name: the last step's
        for a in latest.values():
            if not a["stored"]:
                console.print(f"· {a['name']}: {a['image_tag']} is only in its node's engine; not downloaded")
                continue
            target = out / (a["name"].replace("/", "_") + (".tar" if a["kind"] != "file" else ""))
            try:
                digest = download(c, f"/v1/tasks/{task_id}/artifacts/{a['name']}", {"step": a["step_id"]}, target)
            except SidecarError as exc:
                fail(f"artifact {a['name']}: {exc}", exc.exit_code)
            if digest != a["sha256"]:
                target.unlink(missing_ok=True)
                fail(f"artifact {a['name']}: downloaded sha256 {digest[:12]}… does not match {a['sha256'][:12]}…", 3)
            console.print(f"· {target} ({human_size(a['size'])}, sha256 {digest} ok)")
            if a["kind"] == "directory" and extract:
                from agent.artifacts import ArtifactError, safe_extract  # here: pydantic costs ~0.1 s a command

                try:
                    safe_extract(target, out)
                except (ArtifactError, OSError, ValueError) as exc:
                    fail(f"artifact {a['name']}: cannot unpack {target}: {exc}")
                console.print(f"  unpacked into {out / a['path'].strip('/')}")
            if a["kind"] == "image":
                console.print(f"  load it with: docker load -i {target}  (tag {a['image_tag']})")

    @app.command()
    def diff(task_id: str, step: Annotated[str | None, typer.Argument(help="One step's checkpoint")] = None) -> None:
        """The whole diff of a task (or of one step's checkpoint), as the approval card cuts it."""
        text = client().request("GET", f"/v1/tasks/{task_id}/diff", params={"step": step} if step else None,
                                text=True)
        typer.echo(text)


def download(c: Any, path: str, params: dict[str, str], target: Path) -> str:
    """Stream ``path`` into ``target`` (atomically); the sha256 of what arrived."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    import httpx  # here: a streamed download; other commands need not load it

    with httpx.stream("GET", c.base + path, headers=c.headers, params=params, timeout=None) as reply:
        if reply.status_code >= 400:
            reply.read()
            raise refused(reply)
        with open(partial, "wb") as handle:
            for chunk in reply.iter_bytes(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
    partial.replace(target)
    return digest.hexdigest()
