"""Session fixtures for the docker layer: one dockerd and the images it needs, for the whole run.

``docker_engine`` starts (or reuses) the Hearth-managed dockerd of ``agent.sandbox.docker_engine``
(engine root ``$HEARTH_DOCKER_ROOT`` or ``~/.cache/hearth/docker``, so images survive between runs),
makes sure ``hearth/debian:bookworm`` exists (debootstrap + ``docker import``: minutes the first
time, nothing later) and points ``HEARTH_DOCKER_HOST`` at it. A daemon this fixture started is
stopped by pid at the end of the session; one that was already running is left alone.

Without a usable engine (not root, no apt, dockerd will not start) the docker tests are skipped
with the reason, unless ``HEARTH_REQUIRE_DOCKER=1`` (CI), which turns that into a failure.

Test modules import the fixtures they use::

    from docker_fixtures import docker_engine  # noqa: F401
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.sandbox.base import SandboxUnavailable
from agent.sandbox.docker_base_image import ensure_base_image
from agent.sandbox.docker_engine import HOST_ENV, DockerDaemon, start_dockerd


@dataclass
class DockerEngine:
    daemon: DockerDaemon
    client: Any
    timings: dict[str, float] = field(default_factory=dict)
    """dockerd_start_s, base_image_s (+ debootstrap_s / import_s when it was built)."""


def _unavailable(reason: str) -> None:
    if os.environ.get("HEARTH_REQUIRE_DOCKER") == "1":
        pytest.fail(f"docker layer required but unavailable: {reason}")
    pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    if os.geteuid() != 0:
        _unavailable("starting dockerd needs root")
    try:
        daemon = start_dockerd()
    except SandboxUnavailable as exc:
        _unavailable(str(exc))
    client = daemon.client()
    timings = {"dockerd_start_s": round(daemon.start_s, 2)}
    started = time.monotonic()
    try:
        timings.update(ensure_base_image(client))
    except SandboxUnavailable as exc:
        daemon.stop()
        _unavailable(str(exc))
    timings["base_image_s"] = round(time.monotonic() - started, 2)
    previous = os.environ.get(HOST_ENV)
    os.environ[HOST_ENV] = daemon.base_url
    try:
        yield DockerEngine(daemon, client, timings)
    finally:
        if previous is None:
            os.environ.pop(HOST_ENV, None)
        else:
            os.environ[HOST_ENV] = previous
        client.close()
        daemon.stop()
