"""``hearth/debian:bookworm``, the docker sandbox's base image, built with debootstrap.

``ensure_base_image()`` makes it (debootstrap ``--variant=minbase`` plus python3, git,
ca-certificates, imported with ``docker import``) from the Debian archive apt uses; an image already
present with the same recipe hash is kept. The debootstrap tarball stays under ``<engine
root>/base/`` (reused when the image is gone, e.g. after the data root was wiped) and the packages
under ``<engine root>/debs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import filelock

from agent.sandbox.apt import DEBIAN_ARCHIVE, apt_install, main_archive
from agent.sandbox.base import SandboxUnavailable
from agent.sandbox.docker_engine import Progress, engine_root, quiet, short_hash

BASE_IMAGE = "hearth/debian:bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "git", "ca-certificates")
BASE_RECIPE_VERSION = "1"
BASE_STRIP = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
              "var/lib/apt/lists")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def base_recipe_hash() -> str:
    recipe = json.dumps({"v": BASE_RECIPE_VERSION, "suite": BASE_SUITE, "packages": BASE_PACKAGES,
                         "strip": BASE_STRIP, "env": BASE_ENV}, sort_keys=True)
    return short_hash(recipe, 12)


def base_tarball(root: Path | None = None) -> Path:
    return (root or engine_root()) / "base" / f"debian-{BASE_SUITE}-{base_recipe_hash()}.tar"


def build_base_tarball(root: Path | None = None, *, progress: Progress = quiet, force: bool = False) -> Path:
    """debootstrap the base rootfs and tar it (cached: an existing tarball is returned as is)."""
    root = root or engine_root()
    tarball = base_tarball(root)
    if tarball.is_file() and not force:
        return tarball
    if os.geteuid() != 0:
        raise SandboxUnavailable("building the base image needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        progress("apt-get install debootstrap")
        apt_install(["debootstrap"])
        if not shutil.which("debootstrap"):
            raise SandboxUnavailable("debootstrap is missing and could not be installed")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    rootfs = tarball.parent / f"rootfs.{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        mirror = (main_archive() or (DEBIAN_ARCHIVE, ""))[0]
        progress(f"debootstrap {BASE_SUITE} minbase + {', '.join(BASE_PACKAGES)} from {mirror}")
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "--components=main", f"--include={','.join(BASE_PACKAGES)}",
             f"--cache-dir={debs}", BASE_SUITE, str(rootfs), mirror],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise SandboxUnavailable("debootstrap failed:\n" + "\n".join(log))
        for rel in BASE_STRIP:
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        done = subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SandboxUnavailable(f"tar of the base rootfs failed: {done.stderr.strip()[-1000:]}")
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def ensure_base_image(
    client: Any, *, root: Path | None = None, progress: Progress = quiet, force: bool = False
) -> dict[str, float]:
    """Make sure ``hearth/debian:bookworm`` (this recipe) exists; returns the seconds spent per step."""
    import docker

    timings: dict[str, float] = {}
    recipe = base_recipe_hash()
    if not force:
        try:
            labels = client.images.get(BASE_IMAGE).labels or {}
        except docker.errors.ImageNotFound:
            labels = {}
        if labels.get("hearth.recipe") == recipe:
            return timings
    root = root or engine_root()
    with filelock.FileLock(str(_mk(root) / "base.lock")):
        started = time.monotonic()
        tarball = build_base_tarball(root, progress=progress, force=force)
        timings["debootstrap_s"] = time.monotonic() - started
        started = time.monotonic()
        progress(f"docker import {tarball.name} as {BASE_IMAGE}")
        changes = [f"ENV {k}={v}" for k, v in BASE_ENV.items()]
        changes += [f"LABEL hearth.recipe={recipe}", 'CMD ["/bin/bash"]']
        repository, tag = BASE_IMAGE.split(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=changes)
        timings["import_s"] = time.monotonic() - started
    return timings


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


