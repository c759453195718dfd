"""Shared fixtures. Slow layers (ray, vm, docker, openclaw, gpu, real_llm, browser, boxes) are marked
``slow`` too, so ``pytest -m "not slow"`` runs the fast unit layer in seconds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Set before any Ray worker starts, so actors (which inherit it) never touch the user's real state.
SESSION_STATE = Path(tempfile.mkdtemp(prefix="hearth-test-state-"))
os.environ["HEARTH_STATE_DIR"] = str(SESSION_STATE)

SLOW_LAYERS = {"ray", "vm", "docker", "openclaw", "gpu", "real_llm", "browser", "boxes", "fuzz", "chaos"}
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_LAYERS & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _stop_session_model_servers() -> Iterator[None]:
    """Model servers that task actors started under the session's state dir are stopped by PID."""
    yield
    for state in SESSION_STATE.glob("embedded-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGTERM)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's real Hearth state from a test."""
    if "HEARTH_TEST_KEEP_STATE" not in os.environ:
        monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path_factory.mktemp("state")))


def git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture
def greeting_project(tmp_path: Path) -> Path:
    """The quick-start example as a fresh Hearth project (a real git repo)."""
    from agent.project import init_project

    path = tmp_path / "greeting"
    shutil.copytree(EXAMPLES / "greeting", path)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "example"], cwd=path, check=True, env=git_env())
    init_project(path, config={"check": "python3 check.py"})
    return path


FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real Ray cluster for the whole session (a head node; failure tests add their own nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"hearth_slots": 4}, "include_dashboard": False,
        "_system_config": FAST_HEALTH})
    ray.init(address=cluster.address, namespace="hearth", logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def scheduler(ray_cluster, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The real Scheduler actor (detached, named) over a session-scoped store."""
    from cluster.scheduler import get_or_create_scheduler

    state = tmp_path_factory.mktemp("scheduler-state")
    # Pre-empt at once and allow it again soon: tests cannot wait the production defaults (minutes).
    handle = get_or_create_scheduler(str(state), {"preempt_after_s": 0, "preempt_cooldown_s": 5})
    handle.state_dir = state
    return handle


from docker_fixtures import docker_engine  # noqa: E402,F401  (session dockerd + base image; docker layer)
from openclaw_session import chat  # noqa: E402,F401  (the session OpenClaw gateway; openclaw layer)
