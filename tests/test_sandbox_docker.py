"""The docker backend against the shared sandbox contract, plus what is particular to it.

A real dockerd (tests/docker_fixtures.py), real containers, real git.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from docker_fixtures import DockerEngine, docker_engine  # noqa: F401
from sandbox_contract import CONTRACT, SandboxFactory, ok, opened

from agent.sandbox import Sandbox, SandboxConfig, SandboxError, open_sandbox
from agent.sandbox.docker import DockerSandbox

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def make(docker_engine: DockerEngine) -> SandboxFactory:  # noqa: F811
    def factory(workspace: Path, config: SandboxConfig) -> Sandbox:
        return open_sandbox("docker", workspace, config, name=f"t-{workspace.parent.name[-20:]}")

    return factory


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_contract(check: Callable[[SandboxFactory, Path], None], make: SandboxFactory, tmp_path: Path) -> None:
    check(make, tmp_path)


def test_container_is_locked_down(docker_engine: DockerEngine, tmp_path: Path) -> None:  # noqa: F811
    config = SandboxConfig(cpus=0.5, memory_mib=128, pids=40)
    with opened(lambda ws, cfg: DockerSandbox(ws, cfg, name="locked"), tmp_path / "ws", config) as sb:
        assert isinstance(sb, DockerSandbox)
        attrs = docker_engine.client.api.inspect_container(sb.container.id)
        host = attrs["HostConfig"]
        assert (host["NetworkMode"], host["CapDrop"], host["ReadonlyRootfs"]) == ("none", ["ALL"], True)
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (500_000_000, 128 * 2**20, 40)
        assert attrs["Config"]["Labels"]["hearth.sandbox"] == "locked"
        caps = ok(sb.exec("grep CapEff /proc/self/status")).stdout.split()[1]
        assert int(caps, 16) == 0
        assert sb.exec("touch /usr/x").exit_code != 0


def test_timeout_leaves_a_concurrent_command_running(docker_engine: DockerEngine, tmp_path: Path) -> None:  # noqa: F811
    with opened(lambda ws, cfg: DockerSandbox(ws, cfg, name="conc"), tmp_path / "ws") as sb:
        results = []
        other = threading.Thread(target=lambda: results.append(sb.exec("sleep 3; echo survived")))
        other.start()
        time.sleep(0.5)
        assert sb.exec("sleep 100", timeout_s=1).timed_out
        other.join(20)
        assert results and results[0].stdout == "survived\n"


def test_background_processes_die_with_the_command(docker_engine: DockerEngine, tmp_path: Path) -> None:  # noqa: F811
    with opened(lambda ws, cfg: DockerSandbox(ws, cfg, name="bg"), tmp_path / "ws") as sb:
        started = time.monotonic()
        assert ok(sb.exec("sleep 60 & echo started")).stdout == "started\n"
        assert time.monotonic() - started < 10
        listing = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
        assert "sleep 60" not in ok(sb.exec(listing)).stdout


def test_writable_root_snapshot_commits_the_container(docker_engine: DockerEngine, tmp_path: Path) -> None:  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = DockerSandbox(ws, SandboxConfig(), name="commit", writable_root=True)
    try:
        ok(sb.exec("echo v1 > /opt/state"))
        sb.write_file("f.txt", "one")
        snap = sb.snapshot()
        image = sb._snapshots[snap]
        assert image.startswith("hearth/snapshot:")
        ok(sb.exec("echo v2 > /opt/state; echo extra > /opt/extra"))
        sb.write_file("f.txt", "two")
        sb.restore(snap)
        assert ok(sb.exec("cat /opt/state; ls /opt")).stdout == "v1\nstate\n"
        assert sb.read_file("f.txt") == "one"
    finally:
        sb.destroy()
    assert not docker_engine.client.images.list(name="hearth/snapshot", filters={"label": "hearth.snapshot-of=commit"})
    assert not docker_engine.client.containers.list(all=True, filters={"label": "hearth.sandbox=commit"})


def test_destroyed_sandbox_refuses_work(docker_engine: DockerEngine, tmp_path: Path) -> None:  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = DockerSandbox(ws, SandboxConfig(), name="gone")
    container = sb.container.id
    sb.destroy()
    with pytest.raises(SandboxError):
        sb.exec("true")
    assert not docker_engine.client.containers.list(all=True, filters={"id": container})
