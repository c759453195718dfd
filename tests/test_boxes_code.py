"""Code goes through the head: nodes with their own state dirs, a project given as a git URL, a resume
on another node, a node lost mid-task, transcripts read from the head (real Ray, real git, scripted
models named so).

Each node here gets its own ``HEARTH_STATE_DIR`` (the raylet's environment, inherited by its actors),
so nothing an attempt leaves on its node is visible to the head or to another node through a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest
import ray
from fastapi.testclient import TestClient
from openclaw_fixtures import Sidecar, free_port, wait_until
from tests_support import configure, from_store

from agent.project import task_branch
from cluster.api import create_app
from cluster.scheduler import wait_for
from cluster.scheduler_client import RaySchedulerClient

pytestmark = pytest.mark.ray
TOKEN = "boxes-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Boxes:
    """Ray nodes added for one test, each with its own state dir; removed at the end if still there."""

    def __init__(self, cluster: Any, root: Path) -> None:
        self.cluster, self.root = cluster, root
        self.nodes: dict[str, tuple[Any, Path]] = {}

    def add(self, pool: str) -> tuple[str, Path]:
        state = self.root / f"node-{len(self.nodes) + 1}"
        node = self.cluster.add_node(num_cpus=1, resources={"hearth_slots": 1}, labels={"pool": pool},
                                     env_vars={"HEARTH_STATE_DIR": str(state)})
        self.nodes[node.node_id] = (node, state)
        return node.node_id, state

    def kill(self, node_id: str) -> None:
        node, _ = self.nodes.pop(node_id)
        self.cluster.remove_node(node, allow_graceful=False)


@pytest.fixture
def boxes(ray_cluster: Any, tmp_path: Path) -> Iterator[Boxes]:
    made = Boxes(ray_cluster, tmp_path / "boxes")
    try:
        ray_cluster.wait_for_nodes()
        yield made
    finally:
        for node, _ in made.nodes.values():
            with contextlib.suppress(Exception):
                ray_cluster.remove_node(node)


@pytest.fixture
def api(scheduler: Any) -> TestClient:
    return TestClient(create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN))


def row(scheduler: Any, task_id: str) -> Any:
    return from_store(scheduler, lambda store: store.task(task_id))


def events(scheduler: Any, task_id: str) -> list[Any]:
    return list(from_store(scheduler, lambda store: store.events(task_id)))


def wait_state(scheduler: Any, task_id: str, states: set[str], timeout_s: float = 120) -> Any:
    assert wait_for(lambda: row(scheduler, task_id).state.value in states, timeout_s), \
        f"{task_id} stuck in {row(scheduler, task_id).state.value}: {row(scheduler, task_id).message}"
    return row(scheduler, task_id)


def submit(scheduler: Any, source: str, model: str = "scripted:demo") -> str:
    return str(ray.get(scheduler.submit.remote(source, "tasks/prd.json", None, None, model)).id)


def attempt_ref(scheduler: Any, task_id: str, index: int) -> str:
    """The ref that keeps the task's ``index``-th attempt's commits."""
    from cluster.repos import attempt_key, attempt_ref_name

    attempts = from_store(scheduler, lambda store: store.attempts(task_id))
    return attempt_ref_name(task_id, attempt_key(attempts[index].id))


def attempt_refs(repo: git.Repo, task_id: str) -> list[tuple[str, str]]:
    listed = repo.git.for_each_ref("--format=%(refname) %(objectname)", f"refs/hearth/attempts/{task_id}/")
    return [tuple(line.split()) for line in listed.splitlines()]  # type: ignore[misc]


def subjects(repo: git.Repo, base: str, ref: str) -> list[str]:
    return [str(c.summary) for c in repo.iter_commits(f"{base}..{ref}")][::-1]


def test_a_box_with_its_own_state_dir_completes_the_demo_its_checkpoints_and_transcripts_reach_the_head(
        scheduler: Any, boxes: Boxes, greeting_project: Path, api: TestClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    node, state = boxes.add("own-state")
    configure(greeting_project, allowed_nodes=["pool=own-state"])
    task_id = submit(scheduler, str(greeting_project))
    final = wait_state(scheduler, task_id, {"completed", "failed"})
    assert final.state.value == "completed", final.message
    assert final.node_id == node
    # The checkpoint commits landed in the user's repo, and the attempt's ref keeps them.
    repo = git.Repo(greeting_project)
    base = final.spec.base_commit
    assert subjects(repo, base, task_branch(task_id)) == ["US-001: Create hello file", "US-002: Create goodbye file"]
    tip = repo.git.rev_parse(task_branch(task_id))
    assert attempt_refs(repo, task_id) == [(attempt_ref(scheduler, task_id, 0), tip)]
    # Node-local state lives under the node's own state dir, never under the project.
    assert (state / "work" / task_id).is_dir() and (state / "node-cache" / "greeting.git" / "HEAD").is_file()
    assert not (greeting_project / ".hearth").exists()

    # What a person reads is on the head: the API and `hearth transcript` read it there.
    steps = api.get(f"/v1/tasks/{task_id}/transcripts", headers=AUTH).json()
    assert [s["step_id"] for s in steps] == ["US-001", "US-002"] and steps[0]["attempts"] == [1]
    record = api.get(f"/v1/tasks/{task_id}/transcripts/US-001", headers=AUTH).json()
    assert record["attempts"][0]["messages"][0]["role"] == "system"
    assert any("hello" in json.dumps(m) for m in record["attempts"][0]["messages"])
    assert record["checks"] and record["checks"][-1]["attempt"] == 1  # the check's whole output is kept
    assert api.get(f"/v1/tasks/{task_id}/transcripts/US-404", headers=AUTH).status_code == 404
    assert api.get(f"/v1/tasks/{task_id}/transcripts", headers={}).status_code == 401

    from typer.testing import CliRunner

    from cluster import local
    from cluster.cli import app

    cli_state = tmp_path / "cli-state"
    cli_state.mkdir()
    monkeypatch.setenv("HEARTH_STATE_DIR", str(cli_state))
    (cli_state / "token").write_text(TOKEN)
    with Sidecar(create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN)) as sidecar:
        (cli_state / "up.json").write_text(local.UpInfo(ray_address="-", api_url=sidecar.url,
                                                        state_dir=str(cli_state)).to_json())
        listed = CliRunner().invoke(app, ["transcript", task_id])
        assert listed.exit_code == 0 and "US-001  (attempt 1)" in listed.output, listed.output
        shown = CliRunner().invoke(app, ["transcript", task_id, "US-002"])
        assert shown.exit_code == 0 and "goodbye" in shown.output and "attempt 1" in shown.output, shown.output
        missing = CliRunner().invoke(app, ["transcript", task_id, "US-404"])
        assert missing.exit_code == 2 and "no transcript for step 'US-404'" in missing.output


class GitDaemon:
    """``git daemon`` on 127.0.0.1, serving (and accepting pushes to) the bare repos under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"git://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}", f"--base-path={root}",
             "--export-all", "--enable=receive-pack", "--informative-errors", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(listening, 30, "git daemon to listen")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the daemon and its children
        self.process.wait(timeout=30)


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    root = tmp_path / "served"
    root.mkdir()
    daemon = GitDaemon(root)
    try:
        yield daemon
    finally:
        daemon.stop()


def test_a_project_given_as_a_git_url_completes_and_its_branch_is_pushed_there(
        scheduler: Any, api: TestClient, git_daemon: GitDaemon, greeting_project: Path) -> None:
    served = git_daemon.root / "greeting.git"
    git.Repo.clone_from(str(greeting_project), str(served), bare=True)
    url = f"{git_daemon.url}/greeting.git"
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": url, "prd_path": "tasks/prd.json",
                                                      "model": "scripted:demo"})
    assert reply.status_code == 201, reply.text
    task_id = reply.json()["id"]
    final = wait_state(scheduler, task_id, {"completed", "failed"})
    assert final.state.value == "completed", final.message
    bare = git.Repo(served)
    prd = json.loads(bare.git.show(f"{task_branch(task_id)}:tasks/prd.json"))
    assert [s["passes"] for s in prd["userStories"]] == [True, True]
    tip = bare.git.rev_parse(task_branch(task_id))
    assert attempt_refs(bare, task_id) == [(attempt_ref(scheduler, task_id, 0), tip)]

    # Bad input: nothing listens there; the error names the URL and the cause, and no task is made.
    gone = "git://127.0.0.1:9/nowhere.git"
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": gone, "prd_path": "tasks/prd.json"})
    assert reply.status_code == 400 and gone in reply.json()["detail"] and "cannot fetch" in reply.json()["detail"]


def test_a_push_the_remote_rejects_fails_the_task_with_the_reason_once(
        scheduler: Any, api: TestClient, git_daemon: GitDaemon, greeting_project: Path) -> None:
    served = git_daemon.root / "guarded.git"
    git.Repo.clone_from(str(greeting_project), str(served), bare=True)
    hook = served / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do case \"$ref\" in refs/heads/hearth/*)\n"
                    "  echo 'hearth branches are protected here' >&2; exit 1;; esac; done\n")
    hook.chmod(0o755)
    task_id = submit(scheduler, f"{git_daemon.url}/guarded.git")
    final = wait_state(scheduler, task_id, {"completed", "failed"})
    assert final.state.value == "failed"
    assert "rejected" in final.message and "project greeting" in final.message and "box " in final.message
    kept = attempt_ref(scheduler, task_id, 0)
    assert "protected" in final.message and kept in final.message
    assert final.attempts == 1  # the same refusal is not retried
    failed = [e for e in events(scheduler, task_id) if e.kind == "task_failed"]
    assert len(failed) == 1 and failed[0].message == final.message
    listed = api.get("/v1/tasks", headers=AUTH).json()
    assert next(t for t in listed if t["id"] == task_id)["message"] == final.message
    # The checkpoint the remote refused is kept on the head.
    mirror = git.Repo(Path(scheduler.state_dir) / "repos" / "greeting.git")
    assert mirror.git.rev_parse(kept)


def test_an_answer_resumes_the_task_on_another_box_from_its_last_checkpoint(
        scheduler: Any, boxes: Boxes, greeting_project: Path) -> None:
    boxes.add("resume")
    boxes.add("resume")
    configure(greeting_project, allowed_nodes=["pool=resume"])
    task_id = submit(scheduler, str(greeting_project), "scripted:ask")
    wait_state(scheduler, task_id, {"waiting_input"})
    ray.get(scheduler.answer.remote(task_id, "blue", "dave"))

    def asked_in_step_2() -> bool:
        last = from_store(scheduler, lambda store: store.last_event(task_id, "clarification_requested"))
        parked = row(scheduler, task_id)  # parked: its attempt has ended and freed the box
        return parked.state.value == "waiting_input" and parked.attempt_id is None and last.step_id == "US-002"
    assert wait_for(asked_in_step_2, 120), row(scheduler, task_id)
    parked = row(scheduler, task_id)
    step_1 = next(e.commit for e in events(scheduler, task_id)
                  if e.kind == "checkpoint_ready" and e.step_id == "US-001")
    boxes.kill(parked.resume_node)  # the box it parked on is gone: the answer must go elsewhere
    assert wait_for(lambda: not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == parked.resume_node), 60)
    ray.get(scheduler.answer.remote(task_id, "green", "dave"))
    final = wait_state(scheduler, task_id, {"completed", "failed"})
    assert final.state.value == "completed", final.message
    assert final.node_id != parked.resume_node

    log = events(scheduler, task_id)
    assert sum(e.kind == "clarification_requested" for e in log) == 2  # nobody was asked twice
    attempts = from_store(scheduler, lambda store: store.attempts(task_id))
    last = [e.step_id for e in log if e.kind == "step_started" and e.attempt_id == attempts[-1].id]
    assert last == ["US-002"] and attempts[-1].node_id != parked.resume_node  # step 2 went on, on another box
    assert not [e for e in log if e.kind == "task_requeued" and e.from_step == 0]
    repo = git.Repo(greeting_project)
    assert repo.is_ancestor(step_1, task_branch(task_id))  # step 1's checkpoint is kept, not redone
    assert repo.git.show(f"{task_branch(task_id)}:answer.txt") == "green"
    transcript = json.loads((Path(scheduler.state_dir) / "blobs" / task_id / "transcripts" /
                             f"US-002.attempt-{final.attempts}.json").read_text())
    assert any(m.get("content") == "Answer from dave: green" for m in transcript)


def test_a_parked_question_holds_no_slot_so_another_task_runs_on_its_one_slot_box(
        scheduler: Any, boxes: Boxes, greeting_project: Path) -> None:
    boxes.add("solo")
    configure(greeting_project, allowed_nodes=["pool=solo"])
    asking = submit(scheduler, str(greeting_project), "scripted:ask")
    assert wait_for(lambda: row(scheduler, asking).state.value == "waiting_input"
                    and row(scheduler, asking).attempt_id is None, 120), row(scheduler, asking)
    other = submit(scheduler, str(greeting_project), "scripted:demo")
    final = wait_state(scheduler, other, {"completed", "failed"})  # before: queued for ever, "waiting for a CPU"
    assert final.state.value == "completed", final.message
    assert row(scheduler, asking).state.value == "waiting_input"
    ray.get(scheduler.answer.remote(asking, "blue", "dave"))
    # Step 2 asks again; answered, the task completes on its box and leaves nothing running for the
    # next test's boxes (a live task of project 'greeting' would lend them its allowed_nodes).
    assert wait_for(lambda: row(scheduler, asking).state.value == "waiting_input" and sum(
        e.kind == "clarification_requested" for e in events(scheduler, asking)) == 2, 120), row(scheduler, asking)
    ray.get(scheduler.answer.remote(asking, "green", "dave"))
    assert wait_state(scheduler, asking, {"completed", "failed"}).state.value == "completed"


def test_node_loss_restarts_from_step_0_tells_the_user_and_keeps_the_first_attempts_commits(
        scheduler: Any, boxes: Boxes, greeting_project: Path) -> None:
    from cluster.openclaw import render

    boxes.add("loss")
    boxes.add("loss")
    configure(greeting_project, allowed_nodes=["pool=loss"], max_attempts=3)
    task_id = submit(scheduler, str(greeting_project), "scripted:sleep-6")
    assert wait_for(lambda: any(e.kind == "checkpoint_ready" for e in events(scheduler, task_id)), 120)
    first = row(scheduler, task_id)
    boxes.kill(first.node_id)
    final = wait_state(scheduler, task_id, {"completed", "failed"}, 180)
    assert final.state.value == "completed", final.message
    # (A placement in the second or so before Ray declares the box dead may land there and be lost
    # before it starts: one more attempt, also from step 0.)
    assert final.node_id != first.node_id and final.attempts >= 2
    requeued = [e for e in events(scheduler, task_id) if e.kind == "task_requeued"]
    kept = attempt_ref(scheduler, task_id, 0)
    assert (requeued[0].from_step, requeued[0].kept_ref) == (0, kept), requeued
    assert all(e.from_step == 0 for e in requeued)
    assert kept in render(requeued[0]).text  # what the chat says
    repo = git.Repo(greeting_project)
    base = final.spec.base_commit
    assert subjects(repo, base, kept) == ["US-001: Create hello file"]
    assert subjects(repo, base, task_branch(task_id)) == ["US-001: Create hello file", "US-002: Create goodbye file"]
    assert repo.git.rev_parse(kept) not in {c.hexsha for c in repo.iter_commits(task_branch(task_id))}
