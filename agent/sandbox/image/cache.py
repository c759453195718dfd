"""What a guest image is (``ImageInfo``) and where the cached ones are.

An image lives under ``platformdirs.user_data_dir("hearth")/images/<recipe-hash>/``; the hash covers
the recipe file (deploy/guest-image/recipe.toml), the helper's C source, the initramfs script
(``BUILD_VERSION``) and the resolved kernel package version. The two newest images are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from agent.sandbox.base import SandboxUnavailable

# Bump when the build logic or the guest scripts change in a way that needs a new image.
BUILD_VERSION = "1"

HELPER_PATH = "/usr/local/sbin/hearth-exec"  # static; also the guest's PID 1 ("init")

# /init of the initramfs (busybox sh). Loads the modules listed in /modules.order, mounts the
# root disk and hands over to `hearth-exec init` (deploy/guest-image/hearth-exec.c), which mounts
# the rest, sets up the task cgroup and runs qemu-ga on virtio-serial.
INITRAMFS_INIT = r"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
for m in $(cat /modules.order); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
if ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "hearth-initramfs: cannot mount /dev/vda" > /dev/ttyS0
  poweroff -f
fi
umount /proc /sys
umount /dev 2>/dev/null
exec switch_root /newroot """ + HELPER_PATH + " init\n"


class ImageBuildError(SandboxUnavailable):
    """The guest image could not be built (missing host tools, no root, apt failure…)."""


@dataclass
class ImageInfo:
    root: Path
    kernel: Path
    initrd: Path
    disk: Path
    recipe_hash: str
    base_hash: str
    kernel_version: str
    kernel_abi: str
    """What ``uname -r`` says in the guest (6.1.0-NN-amd64)."""
    cmdline: str
    packages: list[str] = field(default_factory=list)
    built: bool = False
    """True when this call built the image, False when it came from the cache."""
    build_s: float = 0.0
    """How long the build took (when it was built, by whichever call built it)."""

    @classmethod
    def load(cls, root: Path, *, built: bool = False) -> ImageInfo:
        m = json.loads((root / "manifest.json").read_text())
        return cls(
            root=root,
            kernel=root / m["kernel_file"],
            initrd=root / "initramfs.img",
            disk=root / "base.qcow2",
            recipe_hash=m["recipe_hash"],
            base_hash=m["base_hash"],
            kernel_version=m["kernel_version"],
            kernel_abi=m["kernel_package"].removeprefix("linux-image-"),
            cmdline=m["cmdline"],
            packages=list(m["packages"]),
            built=built,
            build_s=float(m.get("build_s", 0.0)),
        )


def images_dir() -> Path:
    override = os.environ.get("HEARTH_IMAGES_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("hearth")) / "images"


def recipe_path() -> Path:
    override = os.environ.get("HEARTH_GUEST_RECIPE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "deploy" / "guest-image" / "recipe.toml"


def load_recipe() -> tuple[dict, str]:
    path = recipe_path()
    if not path.is_file():
        raise ImageBuildError(f"guest image recipe not found at {path} (set HEARTH_GUEST_RECIPE)")
    text = path.read_text()
    return tomllib.loads(text), text


def helper_source() -> str:
    """C source of the guest's static exec/sync helper (deploy/guest-image/hearth-exec.c)."""
    path = recipe_path().parent / "hearth-exec.c"
    if not path.is_file():
        raise ImageBuildError(f"guest helper source not found at {path}")
    return path.read_text()


def base_hash(recipe_text: str, helper: str = "") -> str:
    """Hash of everything in the recipe except the kernel version (known only through apt)."""
    h = hashlib.sha256()
    for part in (BUILD_VERSION, recipe_text, INITRAMFS_INIT, helper):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def full_hash(base: str, kernel_pkg: str, kernel_ver: str) -> str:
    return hashlib.sha256(f"{base}\0{kernel_pkg}\0{kernel_ver}".encode()).hexdigest()[:16]


def find_guest_image(root: Path | None = None) -> ImageInfo | None:
    """The newest complete image built from the current recipe, or None (no apt lookup)."""
    root = root or images_dir()
    try:
        _, text = load_recipe()
        want = base_hash(text, helper_source())
    except ImageBuildError:
        return None
    best: tuple[float, Path] | None = None
    if not root.is_dir():
        return None
    for d in root.iterdir():
        man = d / "manifest.json"
        if not man.is_file():
            continue
        try:
            m = json.loads(man.read_text())
        except (OSError, ValueError):
            continue
        if m.get("base_hash") != want:
            continue
        if best is None or m.get("built_at", 0) > best[0]:
            best = (m.get("built_at", 0), d)
    return ImageInfo.load(best[1]) if best else None


def prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete images (each is ~0.5 GB)."""
    found = []
    for d in root.iterdir():
        try:
            found.append((json.loads((d / "manifest.json").read_text()).get("built_at", 0), d))
        except (OSError, ValueError):
            continue
    for _, d in sorted(found, reverse=True)[keep:]:
        shutil.rmtree(d, ignore_errors=True)
