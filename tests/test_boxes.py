"""Real home-lab boxes that share nothing but the network (tests/boxes_fixtures.py).

One head (``hearth up --slots 0``, a head.toml) and two boxes per module (``hearth node start
--address`` each in its own mount namespace and loopback address). Tasks use scripted models
(named so): a real model cannot be made to take a step of a known length. The box-kill test runs
last, because it leaves one box.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest
from boxes_fixtures import (
    RAN,
    REPO,
    Box,
    Head,
    boxes_cluster,
    command_form,
    free_port,
    process_running,
    wait_until,
)
from tests_support import configure, embedded_model_missing

from agent.project import task_branch
from cluster.node_join import JoinError, probe_head

pytestmark = pytest.mark.boxes

HEAD_TOML = "[scheduler]\naging_s = 123\npreempt_after_s = 0\npreempt_cooldown_s = 5\n"
FINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Head, list[Box]]]:
    with boxes_cluster([("box-a", "127.0.0.3"), ("box-b", "127.0.0.4")], head_toml=HEAD_TOML) as cluster:
        yield cluster


def make_project(root: Path, name: str) -> Path:
    """The quick-start example as a project on the head, made with the real `hearth init`."""
    path = root / name
    shutil.copytree(REPO / "examples" / "greeting", path)
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "example"]):
        subprocess.run(["git", *command], cwd=path, check=True, env={
            **os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"})
    Head(root / "cli-state").cli("init", str(path), "--check", "python3 check.py")  # named after its directory
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path, "greeting")


def listeners(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every TCP listening socket owned by ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        owners = re.findall(r'"([^"]+)",pid=(\d+)', line)
        if any(int(pid) in pids for _, pid in owners):
            found.append((fields[3].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:"), owners[0][0]))
    return found


def test_boxes_share_nothing_but_the_network(lab: tuple[Head, list[Box]], project: Path) -> None:
    head, boxes = lab
    for box in boxes:
        assert box.run("hostname").stdout.strip() == box.name
        # The user's repo, the head's state, Hearth's checkout on the head (an empty mount point there).
        for head_path in (project, head.state, REPO / "cluster"):
            assert box.run("test", "-e", str(head_path)).returncode == 1, f"{box.name} sees {head_path}"
        assert box.run("test", "-f", "/tmp/hearth-code/cluster/cli.py").returncode == 0
    nodes = {n["address"]: n for n in head.api("GET", "/v1/nodes")}
    assert {a: (n["slots"], n["alive"], n["refused"]) for a, n in nodes.items()} == {
        "127.0.0.2": (0, True, None), "127.0.0.3": (1, True, None), "127.0.0.4": (1, True, None)}
    assert nodes["127.0.0.2"]["labels"]["hearth-role"] == "head"
    assert {nodes[b.ip]["labels"]["hearth-box"] for b in boxes} == {b.name for b in boxes}
    listed = head.cli("nodes").stdout  # what the operations guide shows
    assert all(box.ip in listed for box in boxes), listed
    assert head.api("GET", "/v1/policy")["aging_s"] == 123  # [scheduler] of head.toml reached the scheduler
    # Ray's parts listen on the address given (or on loopback), or, where Ray cannot be told, on every
    # interface; never on some other address of this machine (the LAN address Ray picks by itself).
    info = head.info()
    assert info is not None
    bound = listeners(set(head.session_pids(info["ray_pid"])) | set(head.session_pids(info["sidecar_pid"])))
    assert bound and all(address in {"127.0.0.2", "127.0.0.1", "*", "0.0.0.0", "::"} for address, _ in bound), bound
    assert any(address == "127.0.0.2" for address, _ in bound)


def test_a_one_box_head_keeps_to_loopback_and_survives_a_sidecar_crash(project: Path, tmp_path: Path) -> None:
    """`hearth up` with no --host: every listener on 127.0.0.1 (Ray would pick the LAN address by
    itself); a sidecar crash mid-task, then `hearth up` again: only the sidecar starts, the attempt
    carries on (restarting Ray would lose it to node_lost)."""
    head = Head(tmp_path / "one-box-state", host="127.0.0.1")
    head.state.mkdir()
    head._port = free_port()
    try:
        head.cli("up", "--port", str(head._port), "--slots", "1")
        info = head.info()
        assert info is not None
        bound = listeners(set(head.session_pids(info["ray_pid"])) | set(head.session_pids(info["sidecar_pid"])))
        assert bound and {address for address, _ in bound} == {"127.0.0.1"}, bound
        task_id = head.submit(project, "scripted:sleep-6")
        wait_until(lambda: head.task(task_id)["state"] == "running", 180, f"{task_id} running")
        os.kill(info["sidecar_pid"], signal.SIGKILL)
        again = head.cli("up", "--port", str(head._port), "--slots", "1")
        assert "starting only the sidecar again" in again.stdout, again.stdout
        after = head.info()
        assert after is not None and after["ray_pid"] == info["ray_pid"]
        wait_until(lambda: head.task(task_id)["state"] in FINAL, 300, f"{task_id} finished")
        task = head.task(task_id)
        assert task["state"] == "completed" and task["attempts"] == 1, task
        _assert_no_event_lost(_events(head, task_id))
    finally:
        head.cli("down", check=False)


def test_ray_refuses_a_wrong_token_and_boxes_say_so(lab: tuple[Head, list[Box]], tmp_path: Path) -> None:
    head, _ = lab
    wrong = tmp_path / "wrong-token"
    wrong.write_text("0" * 64 + "\n")
    with pytest.raises(JoinError, match="refused this box's cluster token"):
        probe_head(head.address, wrong, "probe", timeout_s=60)
    env = {**os.environ, "HEARTH_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    (tmp_path / "state").mkdir()
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "node", "start", "--address", head.address,
                           "--host", "127.0.0.5", "--token-file", str(wrong), "--timeout", "30"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"the head at {head.address} refused this box's cluster token" in done.stderr


def test_a_box_with_another_hearth_is_refused_at_join(lab: tuple[Head, list[Box]], tmp_path: Path) -> None:
    head, _ = lab
    other = tmp_path / "other-hearth"
    for package in ("agent", "cluster"):
        shutil.copytree(REPO / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    with (other / "cluster" / "__init__.py").open("a") as init:
        init.write("# another build of Hearth\n")
    (tmp_path / "state").mkdir()
    env = {**os.environ, "HEARTH_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(other)}
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "node", "start", "--address", head.address,
                           "--host", "127.0.0.5", "--token-file", str(head.state / "ray-token")],
                          env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(rf"box \S+ runs Hearth \S+ but the head at {re.escape(head.address)} runs Hearth \S+",
                     done.stderr), done.stderr
    assert len(head.api("GET", "/v1/nodes")) == 3  # it never joined


def _events(head: Head, task_id: str) -> list[Any]:
    store = head.store()
    try:
        return list(store.events(task_id))
    finally:
        store.close()


def _assert_no_event_lost(events: list[Any]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), [(e.seq, e.kind) for e in events]


def test_head_sidecar_and_scheduler_killed_mid_task(lab: tuple[Head, list[Box]], project: Path) -> None:
    """The sidecar and the scheduler die mid-step; `hearth up` starts only the sidecar again (Ray, and
    the attempt on its box, carry on), Ray restarts the scheduler, and the task completes."""
    head, _ = lab
    task_id = head.submit(project, "scripted:sleep-6")
    wait_until(lambda: head.task(task_id)["state"] == "running", 180, f"{task_id} running")
    info = head.info()
    assert info is not None
    ray_pid, scheduler_pid = info["ray_pid"], head.scheduler_pid()
    os.kill(info["sidecar_pid"], signal.SIGKILL)
    os.kill(scheduler_pid, signal.SIGKILL)
    restarted = head.up()
    assert "starting only the sidecar again" in restarted.stdout, restarted.stdout
    after = head.info()
    assert after is not None and after["ray_pid"] == ray_pid and after["sidecar_pid"] != info["sidecar_pid"]
    wait_until(lambda: head.task(task_id)["state"] in FINAL, 300, f"{task_id} finished")
    task = head.task(task_id)
    assert task["state"] == "completed", task["message"]
    assert task["attempts"] == 1  # the attempt on the box carried on through the head's crash
    assert head.scheduler_pid() != scheduler_pid
    events = _events(head, task_id)
    _assert_no_event_lost(events)
    assert [e.step_id for e in events if e.kind == "step_started"] == ["US-001", "US-002"]


def test_the_demo_prd_completes_on_a_box_and_its_checkpoints_land_on_the_head(
        lab: tuple[Head, list[Box]], project: Path) -> None:
    """The quick-start demo with the real embedded model (CPU), served on the box that runs it."""
    missing = embedded_model_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must have the embedded model (deploy/setup.sh installs it): {missing}")
    if missing:
        pytest.skip(f"embedded model unavailable: {missing}")
    head, boxes = lab
    task_id = head.submit(project, "embedded:smollm2-135m")
    wait_until(lambda: head.task(task_id)["state"] in FINAL, 900, f"{task_id} finished", interval_s=2)
    task = head.task(task_id)
    assert task["state"] == "completed", task["message"]
    nodes = {n["node_id"]: n["address"] for n in head.api("GET", "/v1/nodes")}
    assert nodes[task["node_id"]] in {b.ip for b in boxes}  # the head runs no tasks
    repo = git.Repo(project)
    branch = task_branch(task_id)
    subjects = [c.summary for c in repo.iter_commits(f"{task['spec']['base_commit']}..{branch}")]
    assert subjects == ["US-002: Create goodbye file", "US-001: Create hello file"]
    prd = json.loads(repo.git.show(f"{branch}:tasks/prd.json"))
    assert [s["passes"] for s in prd["userStories"]] == [True, True]
    assert repo.head.commit.hexsha == task["spec"]["base_commit"]  # the user's checkout is untouched


def _parked_in_step_2(head: Head, task_id: str) -> bool:
    task = head.task(task_id)
    asked = [e for e in _events(head, task_id) if e.kind == "clarification_requested"]
    return task["state"] == "waiting_input" and task["attempt_id"] is None and asked[-1].step_id == "US-002"


def test_an_answer_while_its_box_is_full_resumes_on_the_other_box_from_its_last_checkpoint(
        lab: tuple[Head, list[Box]], project: Path, tmp_path: Path) -> None:
    head, _ = lab
    task_id = head.submit(project, "scripted:ask")
    wait_until(lambda: head.task(task_id)["state"] == "waiting_input", 180, f"{task_id} asks")
    head.cli("answer", task_id, "blue")
    wait_until(lambda: _parked_in_step_2(head, task_id), 180, f"{task_id} parked asking in step 2")
    parked = head.task(task_id)
    step_1 = next(e.commit for e in _events(head, task_id) if e.kind == "checkpoint_ready" and e.step_id == "US-001")
    nodes = {n["node_id"]: n for n in head.api("GET", "/v1/nodes")}
    full = nodes[parked["resume_node"]]["labels"]["hearth-box"]
    # Fill the box the question was asked on (with another project's task, kept to that box); the
    # answer must then go to the other box.
    other = make_project(tmp_path, "blocker")
    configure(other, allowed_nodes=[f"hearth-box={full}"])
    blocker = head.submit(other, "scripted:sleep-60")
    try:
        wait_until(lambda: head.task(blocker)["state"] == "running", 180, f"{blocker} running on {full}")
    except AssertionError as error:
        raise AssertionError(f"{error}; it is {head.task(blocker)}; nodes {head.api('GET', '/v1/nodes')}") from None
    head.cli("answer", task_id, "green")
    wait_until(lambda: head.task(task_id)["state"] in FINAL, 300, f"{task_id} finished")
    head.cli("cancel", blocker)
    task = head.task(task_id)
    assert task["state"] == "completed", task["message"]
    assert nodes[task["node_id"]]["labels"]["hearth-box"] != full
    events = _events(head, task_id)
    _assert_no_event_lost(events)
    last_attempt = task["attempt_id"] or [e.attempt_id for e in events if e.kind == "step_started"][-1]
    assert [e.step_id for e in events if e.kind == "step_started" and e.attempt_id == last_attempt] == ["US-002"]
    assert not [e for e in events if e.kind == "task_requeued" and e.from_step == 0]
    repo = git.Repo(project)
    assert repo.is_ancestor(step_1, task_branch(task_id))  # step 1's checkpoint was kept, not redone
    assert repo.git.show(f"{task_branch(task_id)}:answer.txt") == "green"


def test_a_project_given_as_a_git_url_completes_and_its_branch_is_pushed_there(
        lab: tuple[Head, list[Box]], project: Path, tmp_path: Path) -> None:
    head, _ = lab
    served = tmp_path / "served"
    served.mkdir()
    git.Repo.clone_from(str(project), str(served / "greeting.git"), bare=True)
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}",
                               f"--base-path={served}", "--export-all", "--enable=receive-pack", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _accepts(port), 30, "git daemon listening")
        url = f"git://127.0.0.1:{port}/greeting.git"
        done = head.cli("submit", "tasks/prd.json", "--project", url, "--model", "scripted:demo")
        task_id = re.search(r"submitted (T-\d+)", done.stdout).group(1)  # type: ignore[union-attr]
        wait_until(lambda: head.task(task_id)["state"] in FINAL, 300, f"{task_id} finished")
        task = head.task(task_id)
        assert task["state"] == "completed", task["message"]
        bare = git.Repo(served / "greeting.git")
        prd = json.loads(bare.git.show(f"{task_branch(task_id)}:tasks/prd.json"))
        assert [s["passes"] for s in prd["userStories"]] == [True, True]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_box_killed_mid_step_restarts_the_task_on_the_other_box(lab: tuple[Head, list[Box]],
                                                                    project: Path) -> None:
    head, boxes = lab
    by_ip = {box.ip: box for box in boxes}
    task_id = head.submit(project, "scripted:sleep-8")
    wait_until(lambda: head.task(task_id)["state"] == "running", 180, f"{task_id} running")
    nodes = {n["node_id"]: n["address"] for n in head.api("GET", "/v1/nodes")}
    first = by_ip[nodes[head.task(task_id)["node_id"]]]
    killed = first.kill()  # every process in the box, by PID: a power cut
    assert killed
    wait_until(lambda: head.task(task_id)["state"] in FINAL, 300, f"{task_id} finished")
    task = head.task(task_id)
    assert task["state"] == "completed", task["message"]
    assert nodes.get(task["node_id"]) != first.ip and task["attempts"] == 2
    events = _events(head, task_id)
    _assert_no_event_lost(events)
    kinds = [(e.kind, getattr(e, "reason", None)) for e in events]
    assert ("attempt_ended", "node_lost") in kinds
    requeued = [e for e in events if e.kind == "task_requeued"]
    assert requeued and requeued[0].reason == "node_lost" and requeued[0].from_step == 0
    told = head.cli("logs", task_id).stdout
    assert "re-queued (node_lost), from step 0" in told
    assert re.search(rf"{task_id}\s.*completed", head.cli("tasks").stdout)


def test_every_command_in_the_operations_guide_was_run(lab: tuple[Head, list[Box]]) -> None:
    """docs/operations.md shows only hearth commands (subcommand and options) these tests ran; the
    last of them, `hearth down`, stops the head by PID."""
    head, _ = lab
    info = head.info()
    assert info is not None
    started = head.session_pids(info["ray_pid"]) + head.session_pids(info["sidecar_pid"])
    head.cli("down")
    wait_until(lambda: not [p for p in started if process_running(p)], 60, "head stopped")
    guide = (REPO / "docs" / "operations.md").read_text()
    documented = {command_form(shlex.split(line.split("$ ", 1)[1]))
                  for line in guide.splitlines() if re.match(r"^\w+\$ hearth ", line)}
    assert len(documented) >= 8
    assert documented <= RAN, sorted(documented - RAN)
