"""An image pushed to a registry the user configures: Debian's docker-registry on a loopback port.

Real dockerd (the session engine), real bwrap, real git; scripted model (named so).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import git
import httpx
import pytest
from tests_support import RecordingController, configure, runner_for, spec_for

from agent.build import ArtifactsConfig
from agent.events import CheckpointReady, TerminationReason

pytestmark = pytest.mark.docker
REGISTRY_CONFIG = """version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("HEARTH_REQUIRE_DOCKER") == "1":
            pytest.fail("docker-registry is not installed (deploy/setup.sh's docker layer installs it)")
        pytest.skip("docker-registry is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(REGISTRY_CONFIG.format(root=tmp_path / "blobs", port=port))
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "registry.log").read_text()
            time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_step_image_is_pushed_to_the_configured_registry(greeting_project: Path, registry: str,
                                                             docker_engine: object) -> None:
    (greeting_project / "Dockerfile").write_text("FROM hearth/debian:bookworm\nCOPY check.py /srv/check.py\n")
    with git.Repo(greeting_project) as repo:
        repo.git.add("-A")
        repo.git.commit("-m", "a Dockerfile", author="t <t@t>")
    configure(greeting_project, artifacts=ArtifactsConfig.model_validate(
        {"image": {"dockerfile": "Dockerfile", "export": "push", "registry": registry}}))
    controller = RecordingController()
    spec = spec_for(greeting_project)
    spec.plan.steps = spec.plan.steps[:1]
    result = runner_for(spec, controller).run()
    assert result.reason == TerminationReason.completed, result.message
    image = next(e for e in controller.events if isinstance(e, CheckpointReady)).artifacts[0]
    assert image.kind == "image" and not image.stored
    assert image.pushed_to == f"{registry}/greeting:T-7-US-001"
    tags = httpx.get(f"http://{registry}/v2/greeting/tags/list", timeout=10).json()
    assert tags["tags"] == ["T-7-US-001"]
