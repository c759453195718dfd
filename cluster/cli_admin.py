"""``hearth model …`` and ``hearth docker …``: this node's model servers and Docker engine.

Set-up and debugging commands that used to be ``python -m agent.…`` entry points. Results are one
JSON document on stdout, progress goes to stderr, and an error is one ``error: …`` line on stderr
with exit code 1, so scripts (deploy/setup.sh, deploy/docker/dockerd.sh) can use them as before.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

model_app = typer.Typer(help="This node's model servers: the embedded one and Docker model containers.",
                        no_args_is_help=True)
docker_app = typer.Typer(help="The Hearth-managed Docker engine (dockerd) and its base image.",
                         no_args_is_help=True)

EmbeddedName = Annotated[str, typer.Option("--model", help="Embedded model (see docs/models.md)")]
Catalogue = Annotated[Path | None, typer.Option(help="models.toml (default <state_dir>/models.toml)")]
EngineRoot = Annotated[Path | None, typer.Option(help="Engine root (default $HEARTH_DOCKER_ROOT or the cache)")]


def _progress(prefix: str) -> Callable[[str], None]:
    return lambda message: print(f"[{prefix}] {message}", file=sys.stderr, flush=True)


def _print(value: Any) -> None:
    print(json.dumps(value))


@contextmanager
def _errors_exit_1(*kinds: type[Exception]) -> Iterator[None]:
    """The expected failure (no engine, no model) is one line on stderr and exit code 1."""
    try:
        yield
    except kinds as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


# -- the embedded model server ---------------------------------------------------------------------


@model_app.command("install-embedded")
def install_embedded(model: EmbeddedName = "smollm2-135m") -> None:
    """Install the embedded model: Node, node-llama-cpp and the GGUF (idempotent; deploy/setup.sh runs it)."""
    from agent.models.base import ModelUnavailable
    from agent.models.embedded_install import install_embedded_model

    with _errors_exit_1(ModelUnavailable):
        install_embedded_model(name=model)


@model_app.command("serve-embedded")
def serve_embedded(model: EmbeddedName = "smollm2-135m") -> None:
    """Start (or find) this node's embedded model server and print its endpoint."""
    from agent.models.base import ModelUnavailable
    from agent.models.embedded import EmbeddedRuntime

    with _errors_exit_1(ModelUnavailable):
        _print(EmbeddedRuntime(progress=print).ensure(model).model_dump())


@model_app.command("stop-embedded")
def stop_embedded(model: EmbeddedName = "smollm2-135m") -> None:
    """Stop this node's embedded model server."""
    from agent.models.base import ModelUnavailable
    from agent.models.embedded import EmbeddedRuntime

    with _errors_exit_1(ModelUnavailable):
        EmbeddedRuntime().release(model)


@model_app.command("status-embedded")
def status_embedded() -> None:
    """The embedded model servers running on this node, as JSON."""
    from agent.models.base import ModelUnavailable
    from agent.models.embedded import EmbeddedRuntime

    with _errors_exit_1(ModelUnavailable):
        _print([m.model_dump() for m in EmbeddedRuntime().loaded()])


# -- model containers --------------------------------------------------------------------------------


@model_app.command("build-image")
def build_image() -> None:
    """Build hearth/llamacpp-cpu, the CPU llama.cpp model image (cached by recipe hash)."""
    from agent.models.base import ModelUnavailable
    from agent.models.llamacpp_image import LOCAL_IMAGE, build_local_llamacpp_image

    with _errors_exit_1(ModelUnavailable):
        started = time.monotonic()
        timings = build_local_llamacpp_image(progress=_progress("models"))
        _print({"image": LOCAL_IMAGE, "total_s": round(time.monotonic() - started, 1),
                **{k: round(v, 1) for k, v in timings.items()}})


def _runtime(catalogue: Path | None) -> Any:
    from agent.models.docker_runtime import DockerModelRuntime

    return DockerModelRuntime(catalogue_path=catalogue, progress=_progress("models"))


@model_app.command("ensure")
def ensure(name: str, catalogue: Catalogue = None) -> None:
    """Start (or find) the catalogue model NAME in a container and print its endpoint."""
    from agent.models.base import ModelUnavailable

    with _errors_exit_1(ModelUnavailable):
        _print(_runtime(catalogue).ensure(name).model_dump())


@model_app.command("release")
def release(name: str, catalogue: Catalogue = None) -> None:
    """Stop the container of the catalogue model NAME."""
    from agent.models.base import ModelUnavailable

    with _errors_exit_1(ModelUnavailable):
        _runtime(catalogue).release(name)


@model_app.command("loaded")
def loaded(catalogue: Catalogue = None) -> None:
    """The model containers running on this node, as JSON."""
    from agent.models.base import ModelUnavailable

    with _errors_exit_1(ModelUnavailable):
        _print([m.model_dump() for m in _runtime(catalogue).loaded()])


@model_app.command("check")
def check(catalogue: Catalogue = None) -> None:
    """Events of the model containers (exits, restarts) since they started, as JSON."""
    from agent.models.base import ModelUnavailable

    with _errors_exit_1(ModelUnavailable):
        runtime = _runtime(catalogue)
        runtime.loaded()
        _print([e.model_dump() for e in runtime.check()])


# -- the Docker engine -------------------------------------------------------------------------------


@docker_app.command("start")
def docker_start(root: EngineRoot = None) -> None:
    """Start (or reuse) the Hearth-managed dockerd and print its socket."""
    _print(_start_engine(root))


@docker_app.command("base-image")
def docker_base_image(root: EngineRoot = None) -> None:
    """Start the engine and make sure hearth/debian:bookworm (this recipe) exists."""
    from agent.sandbox.base import SandboxUnavailable
    from agent.sandbox.docker_base_image import ensure_base_image
    from agent.sandbox.docker_engine import start_dockerd

    say = _progress("docker")
    with _errors_exit_1(SandboxUnavailable):
        daemon = start_dockerd(root, progress=say)
        out = _engine_json(daemon)
        client = daemon.client()
        try:
            started = time.monotonic()
            timings = ensure_base_image(client, root=root, progress=say)
        finally:
            client.close()
        out["timings"] = {k: round(v, 1) for k, v in timings.items()}
        out["base_image_s"] = round(time.monotonic() - started, 1)
    _print(out)


@docker_app.command("stop")
def docker_stop(root: EngineRoot = None) -> None:
    """Stop the Hearth-managed dockerd (only one that Hearth started)."""
    from agent.sandbox.docker_engine import stop_dockerd

    _print({"stopped": stop_dockerd(root)})


@docker_app.command("status")
def docker_status(root: EngineRoot = None) -> None:
    """Whether the Hearth-managed dockerd answers on its socket."""
    from agent.sandbox.docker_engine import engine_root, ping, run_dir

    resolved = (root or engine_root()).resolve()
    sock = run_dir(resolved) / "docker.sock"
    _print({"root": str(resolved), "socket": str(sock), "running": ping(sock)})


def _start_engine(root: Path | None) -> dict[str, Any]:
    from agent.sandbox.base import SandboxUnavailable
    from agent.sandbox.docker_engine import start_dockerd

    with _errors_exit_1(SandboxUnavailable):
        return _engine_json(start_dockerd(root, progress=_progress("docker")))
    raise AssertionError("unreachable")  # pragma: no cover


def _engine_json(daemon: Any) -> dict[str, Any]:
    return {"socket": str(daemon.socket), "pid": daemon.pid, "started": daemon.started,
            "start_s": round(daemon.start_s, 2), "driver": daemon.storage_driver, "docker_host": daemon.base_url}
