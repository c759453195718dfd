"""A Docker image built from the tree a checkpoint is about to commit, by the node's engine.

The build context is ``git archive`` of that tree (what ``git add -A`` would commit, computed with
a throw-away index so the workspace's own index is untouched): the image is exactly the
checkpoint's code, never files the build left lying around unless they are committed. The build
talks to the engine over its API from the runner's process; the sandbox never sees the socket.
Base images come from the engine (``pull=False``): the home lab has no registry to pull from.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.artifacts import ArtifactError, ArtifactRef, StagedArtifact, sha256_file


class ImageConfig(BaseModel):
    """A Docker image built from each checkpoint's tree (``[artifacts.image]``)."""

    model_config = ConfigDict(extra="forbid")

    dockerfile: str = Field(default="", description="Dockerfile path in the repository; empty: no image.")
    tag: str = Field(
        default="{project}:{task}-{step}",
        description="Image tag template; {project}, {task} and {step} are filled in (lower-cased where "
        "Docker needs it).",
    )
    export: Literal["none", "save", "push"] = Field(
        default="none",
        description="none: the image stays in the node's engine; save: `docker save` it into the head's "
        "artifact store (downloadable, `docker load`-able anywhere); push: push it to `registry`.",
    )
    registry: str = Field(default="", description="host:port[/prefix] to push to when export = 'push'.")
    timeout_s: float = Field(default=900, gt=0, description="Seconds an image build (or save/push) may take.")


def _task_git_env(workspace: Path, index: Path | None = None) -> dict[str, str]:
    """Hardened git on the task clone's host-private git dir (agent/host_git.py); never a ``.git``
    the sandbox may have planted in the work tree."""
    from agent.host_git import hardened_git_env, task_git_dir  # GitPython: hearth.toml's readers need not load it

    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(hardened_git_env(task_git_dir(workspace), workspace))
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    return env


def checkpoint_tree(workspace: Path) -> str:
    """The tree id of everything ``git add -A`` would commit now (the real index is left alone)."""
    with tempfile.TemporaryDirectory(prefix="hearth-index-") as tmp:
        env = _task_git_env(workspace, Path(tmp) / "index")

        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=workspace, env=env, check=True, capture_output=True,
                                  text=True).stdout.strip()

        git("read-tree", "HEAD")
        git("add", "-A")
        return git("write-tree")


def _context_tar(workspace: Path, tree: str, target: Path) -> None:
    with open(target, "wb") as out:
        subprocess.run(["git", "archive", "--format=tar", tree], cwd=workspace, stdout=out, check=True,
                       env=_task_git_env(workspace))


def build_image(workspace: Path, config: ImageConfig, *, tag: str, out_dir: Path, max_bytes: int
                ) -> tuple[StagedArtifact, str]:
    """Build (and save or push) the image; the staged artifact and the build log's tail."""
    import docker

    from agent.sandbox.base import SandboxUnavailable
    from agent.sandbox.docker_engine import docker_client

    tree = checkpoint_tree(workspace)
    listed = subprocess.run(["git", "ls-tree", "--name-only", tree, "--", config.dockerfile], cwd=workspace,
                            capture_output=True, text=True, env=_task_git_env(workspace)).stdout.strip()
    if not listed:
        raise ArtifactError(f"artifact image: {config.dockerfile} is not in the checkpoint's tree "
                            "(commit it, and make sure .gitignore does not hide it)")
    try:
        client = docker_client(timeout_s=int(config.timeout_s))
    except SandboxUnavailable as exc:
        raise ArtifactError(f"artifact image: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        context = out_dir / ".context.tar"
        _context_tar(workspace, tree, context)
        try:
            image_id, log = _build(client, context, config.dockerfile, tag)
        finally:
            context.unlink(missing_ok=True)
        ref = ArtifactRef(name="image", kind="image", sha256="0" * 64, size=0, image_id=image_id, image_tag=tag,
                          stored=False)
        if config.export == "save":
            target = out_dir / "image.tar"
            _save(client, image_id, tag, target, max_bytes)
            ref = ref.model_copy(update={"sha256": sha256_file(target), "size": target.stat().st_size,
                                         "stored": True})
            return StagedArtifact(ref=ref, file=str(target)), log
        if config.export == "push":
            ref = ref.model_copy(update={"pushed_to": _push(client, image_id, tag, config.registry)})
        return StagedArtifact(ref=ref, file=""), log
    except docker.errors.APIError as exc:
        raise ArtifactError(f"artifact image: the Docker engine refused: {exc.explanation or exc}") from None
    except (OSError, docker.errors.DockerException) as exc:
        raise ArtifactError(f"artifact image: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


def _build(client: Any, context: Path, dockerfile: str, tag: str) -> tuple[str, str]:
    lines: list[str] = []
    image_id = ""
    with open(context, "rb") as fileobj:
        for chunk in client.api.build(fileobj=fileobj, custom_context=True, dockerfile=dockerfile, tag=tag,
                                      rm=True, forcerm=True, pull=False, decode=True):
            if "stream" in chunk:
                lines.append(str(chunk["stream"]))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                image_id = str(chunk["aux"]["ID"])
            if "error" in chunk:
                log = "".join(lines)[-1500:]
                raise ArtifactError(f"artifact image: the Dockerfile {dockerfile} failed: "
                                    f"{str(chunk['error']).strip()}\n{log}")
    if not image_id:
        image_id = str(client.images.get(tag).id)
    return image_id, f"image {tag} built ({image_id[:19]})\n" + "".join(lines)[-1000:]


def _save(client: Any, image_id: str, tag: str, target: Path, max_bytes: int) -> None:
    written = 0
    with open(target, "wb") as out:
        for chunk in client.api.get_image(tag):
            written += len(chunk)
            if written > max_bytes:
                out.close()
                target.unlink(missing_ok=True)
                raise ArtifactError(f"artifact image: docker save of {tag} is over the limit of {max_bytes} bytes")
            out.write(chunk)


def _push(client: Any, image_id: str, tag: str, registry: str) -> str:
    if not registry:
        raise ArtifactError("artifact image: export = 'push' needs [artifacts.image] registry = 'host:port'")
    repo, _, version = tag.rpartition(":")
    remote = f"{registry.rstrip('/')}/{repo.split('/')[-1]}"
    client.api.tag(image_id, remote, version)
    for chunk in client.api.push(remote, tag=version, stream=True, decode=True):
        if "error" in chunk:
            raise ArtifactError(f"artifact image: push to {remote}:{version} failed: {chunk['error']}")
    return f"{remote}:{version}"
