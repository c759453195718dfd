"""What a finished task leaves, through the real cluster: Ray scheduler, sidecar over HTTP, the CLI.

Scripted models (named so) write the files; real git, real bwrap, real make and (docker layer) the
real Docker engine build the image, which is then loaded and run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openclaw_fixtures import Sidecar
from tests_support import from_store
from typer.testing import CliRunner

from agent.events import BranchFinished, CheckpointReady
from agent.project import init_project, task_branch
from cluster import local
from cluster.api import create_app
from cluster.cli import app as cli
from cluster.scheduler import wait_for
from cluster.scheduler_client import RaySchedulerClient

pytestmark = pytest.mark.ray
TOKEN = "deliverables-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "PATH": "/usr/bin:/bin"}
MAKEFILE = "dist:\n\tmkdir -p dist\n\tcp {name} dist/\n\techo 1.0 > dist/VERSION\n"
DOCKERFILE = 'FROM hearth/debian:bookworm\nCOPY hello.txt /srv/hello.txt\nCMD ["cat", "/srv/hello.txt"]\n'


def git_out(repo: Path, *args: str) -> str:
    """git through a subprocess (no GitPython object with persistent cat-file processes to leak)."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def story(sid: str, name: str, text: str) -> dict[str, Any]:
    return {"id": sid, "title": f"Write {name}", "description": f"Write {name}.",
            "acceptanceCriteria": [f'{name} contains "{text}"'], "priority": 1, "passes": False}


def prd(*stories: dict[str, Any]) -> str:
    return json.dumps({"name": "Deliverables", "userStories": list(stories)}, indent=2)


def make_project(root: Path, files: dict[str, str], **config: Any) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "project"], cwd=root, check=True, env=ENV)
    init_project(root, config=config)
    return root


@pytest.fixture
def api(scheduler: Any) -> TestClient:
    return TestClient(create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN))


@pytest.fixture
def hearth(scheduler: Any) -> Any:
    """The ``hearth`` CLI against a real sidecar on a loopback port (as after ``hearth up``)."""
    state = local.state_dir()
    local.token_path(state).write_text(TOKEN)
    with Sidecar(create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN)) as sidecar:
        (state / "up.json").write_text(local.UpInfo(ray_address="-", api_url=sidecar.url,
                                                    state_dir=str(state)).to_json())
        runner = CliRunner()

        def run(*args: str) -> str:
            done = runner.invoke(cli, list(args))
            assert done.exit_code == 0, done.output
            return str(done.output)
        yield run


def submit(api: TestClient, project: Path, prd_path: str) -> str:
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": str(project), "prd_path": prd_path,
                                                      "model": "scripted:demo"})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def wait_state(scheduler: Any, task_id: str, states: set[str], timeout_s: float = 240) -> str:
    def state() -> str:
        return str(from_store(scheduler, lambda db: db.task(task_id).state.value))
    assert wait_for(lambda: state() in states, timeout_s, interval_s=0.2), f"{task_id} stuck in {state()}"
    return state()


def events(scheduler: Any, task_id: str) -> list[Any]:
    return list(from_store(scheduler, lambda db: db.events(task_id)))


@pytest.mark.docker
def test_build_image_approval_card_merge_and_download(scheduler: Any, api: TestClient, hearth: Any,
                                                      docker_engine: Any, tmp_path: Path) -> None:
    project = make_project(tmp_path / "shop", {
        "tasks/prd.json": prd(story("US-001", "hello.txt", "hello from hearth")),
        "Makefile": MAKEFILE.format(name="hello.txt"), "Dockerfile": DOCKERFILE, ".gitignore": "dist/\n"},
        check="test -f hello.txt", approval="final",
        artifacts={"build": "make dist", "paths": ["dist"],
                   "image": {"dockerfile": "Dockerfile", "export": "save"}})
    task_id = submit(api, project, "tasks/prd.json")
    wait_state(scheduler, task_id, {"awaiting_approval", "failed"})
    pending = next(t["pending"] for t in api.get("/v1/approvals", headers=AUTH).json() if t["id"] == task_id)
    assert pending["final"] and "+hello from hearth" in pending["diff"] and "1.0" not in pending["diff"]
    assert {a["name"] for a in pending["artifacts"]} == {"dist", "image"}
    card = hearth("show", task_id)
    assert "+hello from hearth" in card and "artifacts:" in card and "--finish keep|merge|push" in card

    hearth("approve", task_id, "--finish", "merge")
    assert wait_state(scheduler, task_id, {"completed", "failed"}) == "completed"
    finished = [e for e in events(scheduler, task_id) if isinstance(e, BranchFinished)]
    assert finished and finished[0].ok and finished[0].action == "merge", finished
    assert git_out(project, "rev-parse", "HEAD") == git_out(project, "rev-parse", task_branch(task_id))  # ff
    assert (project / "hello.txt").read_text() == "hello from hearth\n"

    out = tmp_path / "download"
    listing = hearth("artifacts", task_id, "--out", str(out))
    refs = {a["name"]: a for a in api.get(f"/v1/tasks/{task_id}/artifacts", headers=AUTH).json()}
    for name in ("dist", "image"):
        data = (out / f"{name}.tar").read_bytes()
        assert hashlib.sha256(data).hexdigest() == refs[name]["sha256"] and len(data) == refs[name]["size"]
    assert (out / "dist" / "hello.txt").read_text() == "hello from hearth\n" and "sha256" in listing
    assert "+hello from hearth" in hearth("diff", task_id, "US-001")

    # the downloaded image loads and runs, printing what the code says
    client = docker_engine.client
    tag = refs["image"]["image_tag"]
    client.images.remove(tag, force=True)
    loaded = client.images.load((out / "image.tar").read_bytes())
    assert tag in loaded[0].tags
    printed = client.containers.run(tag, remove=True, network_mode="none")
    assert printed == b"hello from hearth\n"
    client.images.remove(tag, force=True)


@pytest.mark.docker
def test_a_failing_dockerfile_fails_the_step_naming_the_image(scheduler: Any, api: TestClient, docker_engine: Any,
                                                              tmp_path: Path) -> None:
    project = make_project(tmp_path / "broken", {
        "tasks/prd.json": prd(story("US-001", "hello.txt", "hi")),
        "Dockerfile": "FROM hearth/debian:bookworm\nRUN exit 7\n"},
        check="test -f hello.txt", artifacts={"image": {"dockerfile": "Dockerfile"}},
        budget={"max_turns": 3}, max_attempts=1)
    task_id = submit(api, project, "tasks/prd.json")
    assert wait_state(scheduler, task_id, {"completed", "failed"}) == "failed"
    message = from_store(scheduler, lambda db: db.task(task_id).message)
    assert "artifact image: the Dockerfile Dockerfile failed" in message
    assert not any(isinstance(e, CheckpointReady) for e in events(scheduler, task_id))


def test_two_tasks_from_one_base_merge_in_turn(scheduler: Any, api: TestClient, tmp_path: Path) -> None:
    project = make_project(tmp_path / "pair", {
        "tasks/a.json": prd(story("A-1", "a.txt", "alpha")), "tasks/b.json": prd(story("B-1", "b.txt", "beta"))},
        check="true", finish={"action": "merge"})
    base = git_out(project, "rev-parse", "HEAD")
    first, second = submit(api, project, "tasks/a.json"), submit(api, project, "tasks/b.json")
    for task_id in (first, second):
        assert wait_state(scheduler, task_id, {"completed", "failed"}) == "completed"
    outcomes = [next(e for e in events(scheduler, t) if isinstance(e, BranchFinished)) for t in (first, second)]
    assert all(o.ok and o.action == "merge" for o in outcomes), outcomes
    for ancestor in (task_branch(first), task_branch(second), base):  # the second merge holds the first
        git_out(project, "merge-base", "--is-ancestor", ancestor, "main")
    assert (project / "a.txt").exists() and (project / "b.txt").exists()
    assert git_out(project, "status", "--porcelain") == ""


def test_submitting_an_uncommitted_prd_json_works(scheduler: Any, api: TestClient, tmp_path: Path) -> None:
    project = make_project(tmp_path / "fresh", {"README.md": "fresh\n"}, check="test -f hello.txt")
    (project / "tasks").mkdir()
    (project / "tasks" / "prd.json").write_text(prd(story("US-001", "hello.txt", "hello")))  # as create-prd leaves it
    task_id = submit(api, project, "tasks/prd.json")
    assert wait_state(scheduler, task_id, {"completed", "failed"}) == "completed"
    subjects = git_out(project, "log", "--format=%s", "-n", "2", "--reverse", task_branch(task_id)).splitlines()
    assert subjects == ["hearth: add tasks/prd.json as submitted", "US-001: Write hello.txt"]
    written = json.loads(git_out(project, "show", f"{task_branch(task_id)}:tasks/prd.json"))
    assert written["userStories"][0]["passes"] is True


def test_finish_is_chosen_only_at_the_final_checkpoint(scheduler: Any, api: TestClient, tmp_path: Path) -> None:
    project = make_project(tmp_path / "steps", {
        "tasks/prd.json": prd(story("US-001", "a.txt", "one"), story("US-002", "b.txt", "two"))},
        check="true", approval="each-step")
    task_id = submit(api, project, "tasks/prd.json")
    decide = f"/v1/tasks/{task_id}/decision"
    wait_state(scheduler, task_id, {"awaiting_approval"})
    early = api.post(decide, headers=AUTH, json={"decision": "approve", "finish": "merge"})
    assert early.status_code == 409 and "applies only to the final checkpoint" in early.json()["detail"]
    bad = api.post(decide, headers=AUTH, json={"decision": "approve", "finish": "squash"})
    assert bad.status_code == 400 and "keep, merge, push" in bad.json()["detail"]
    assert api.post(decide, headers=AUTH, json={"decision": "approve"}).status_code == 200
    assert wait_for(lambda: any(isinstance(e, CheckpointReady) and e.final for e in events(scheduler, task_id)),
                    240, interval_s=0.2)
    wait_state(scheduler, task_id, {"awaiting_approval"})
    # push to a remote the project does not have: reported, the branch kept, the task still completed
    assert api.post(decide, headers=AUTH, json={"decision": "approve", "finish": "push"}).status_code == 200
    assert wait_state(scheduler, task_id, {"completed", "failed"}) == "completed"
    finished = next(e for e in events(scheduler, task_id) if isinstance(e, BranchFinished))
    assert finished.action == "push" and not finished.ok and "push of" in finished.message
    assert git_out(project, "rev-parse", "main") != git_out(project, "rev-parse", task_branch(task_id))
