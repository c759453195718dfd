"""The guest image of the qemu sandbox backend, built from Debian packages only.

``build_guest_image()`` makes, from the machine's configured Debian mirror (whatever apt uses):

* ``vmlinux``: the uncompressed kernel ELF out of Debian's ``linux-image-*-amd64`` package. QEMU
  boots it through its PVH note; under TCG that saves the ~5 s the in-guest XZ decompression of
  the bzImage costs (see shared/research/microvm.md).
* ``initramfs.img``: a gzip'd newc cpio holding a static busybox and the virtio/ext4 modules; its
  ``/init`` loads them and switch_roots into the root disk.
* ``base.qcow2``: an ext4 root filesystem made by ``debootstrap --variant=minbase`` with the
  packages of ``deploy/guest-image/recipe.toml`` (git, python3, make, gcc, qemu-guest-agent…)
  and ``/usr/local/sbin/hearth-exec`` (deploy/guest-image/hearth-exec.c, compiled static in the
  chroot): PID 1 (mounts, task cgroup limits, qemu-ga on virtio-serial) and the exec/sync helper.

The result is cached under ``platformdirs.user_data_dir("hearth")/images/<recipe-hash>/``; the
hash covers the recipe file, the helper's C source, the initramfs script (``BUILD_VERSION``) and
the resolved kernel package version, so an unchanged recipe is never rebuilt; the two newest images
are kept, older ones are deleted after a build. Run it as ``hearth image build`` or
``python -m agent.sandbox.image``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
from filelock import FileLock

from agent.sandbox.base import SandboxUnavailable

Progress = Callable[[str], None]

# Bump when the build logic or the guest scripts change in a way that needs a new image.
BUILD_VERSION = "1"

HOST_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "dpkg-deb": "dpkg",
}

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


# ------------------------------------------------------------------------------------------------
# recipe


def images_dir() -> Path:
    override = os.environ.get("HEARTH_IMAGES_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("hearth")) / "images"


def recipe_path() -> Path:
    override = os.environ.get("HEARTH_GUEST_RECIPE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "deploy" / "guest-image" / "recipe.toml"


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


# ------------------------------------------------------------------------------------------------
# host tools


def _run(argv: list[str], *, progress: Progress | None = None, cwd: Path | None = None,
         env: dict[str, str] | None = None, what: str = "") -> str:
    """Run a build command; stream its lines to ``progress``; raise ImageBuildError on failure."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if progress and line:
            progress(f"{what or argv[0]}: {line}")
    rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise ImageBuildError(f"{what or argv[0]} failed (exit {rc}): {' '.join(argv)}\n{tail}")
    return "\n".join(lines)


def ensure_host_tools(progress: Progress | None = None) -> None:
    """Install qemu-system-x86, qemu-utils, debootstrap, e2fsprogs with apt when missing."""
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageBuildError(
            f"missing host packages {', '.join(missing)}: install them with "
            f"`sudo apt-get install --no-install-recommends {' '.join(missing)}`"
        )
    if progress:
        progress(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    try:
        _run(argv, env=env, what="apt-get install")
    except ImageBuildError:
        _run(["apt-get", "update", "-q"], env=env, what="apt-get update")
        _run(argv, env=env, what="apt-get install")
    still = [t for t in HOST_PACKAGES if shutil.which(t) is None]
    if still:
        raise ImageBuildError(f"host tools still missing after apt-get install: {', '.join(still)}")


def apt_mirror() -> tuple[str, str]:
    """(mirror URI, suite) of the main Debian archive apt is configured with."""
    out = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)",
         "Created-By: Packages"],
        capture_output=True, text=True, check=False,
    ).stdout
    candidates = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] == "main":
            candidates.append((parts[0], parts[1]))
    # Prefer the plain suite (bookworm) over -updates / -security.
    for uri, rel in candidates:
        if "-" not in rel and "security" not in uri:
            return uri, rel
    raise ImageBuildError(
        "could not find the Debian mirror apt uses (apt-get indextargets gave nothing): "
        "run `apt-get update` first"
    )


def resolve_kernel(
    meta: str, progress: Progress | None = None, *, allow_update: bool = True
) -> tuple[str, str]:
    """linux-image-amd64 -> (linux-image-6.1.0-NN-amd64, its candidate version)."""
    def lookup() -> tuple[str, str] | None:
        # One apt-cache call (each re-reads the lists: ~1-2 s here): the metapackage pins the
        # exact version of the ABI package it depends on, "linux-image-6.1.0-NN-amd64 (= V)".
        show = subprocess.run(["apt-cache", "show", "--no-all-versions", meta],
                              capture_output=True, text=True).stdout
        m = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,]*)\s*\(=\s*([^)\s]+)\)", show, re.M)
        return (m.group(1), m.group(2)) if m else None

    found = lookup()
    if found is None and allow_update and os.geteuid() == 0:
        if progress:
            progress("apt-get update (kernel package not in the apt lists)")
        _run(["apt-get", "update", "-q"], what="apt-get update")
        found = lookup()
    if found is None:
        raise ImageBuildError(f"cannot resolve the kernel package {meta!r} with apt-cache (apt-get update?)")
    return found


# ------------------------------------------------------------------------------------------------
# initramfs


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries (directories have data b"")."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        )
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for i, (name, mode, data) in enumerate(entries, start=1):
        put(name, mode, data, i)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def _module_deps(ko: Path) -> list[str]:
    data = ko.read_bytes()
    i = data.find(b"\0depends=")
    if i < 0:
        return []
    raw = data[i + len(b"\0depends="): data.index(b"\0", i + 1)].decode()
    return [d for d in raw.split(",") if d]


def _modules_closure(moddir: Path, wanted: list[str]) -> list[Path]:
    index = {p.name[:-3].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        ko = index.get(name)
        if ko is None:
            return  # built in
        for dep in _module_deps(ko):
            visit(dep)
        order.append(ko)

    for w in wanted:
        if w.replace("-", "_") not in index:
            raise ImageBuildError(f"kernel module {w!r} not found in {moddir}")
        visit(w)
    return order


def _make_initramfs(busybox: Path, modules: list[Path], dest: Path) -> None:
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "newroot", "lib", "lib/modules", "etc"):
        entries.append((d, 0o40755, b""))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    names = []
    for ko in modules:
        name = ko.name[:-3]
        names.append(name)
        entries.append((f"lib/modules/{name}.ko", 0o100644, ko.read_bytes()))
    entries.append(("modules.order", 0o100644, ("\n".join(names) + "\n").encode()))
    entries.append(("init", 0o100755, INITRAMFS_INIT.encode()))
    dest.write_bytes(gzip.compress(_newc(entries), compresslevel=6))


# ------------------------------------------------------------------------------------------------
# build


def build_guest_image(progress: Progress | None = None, force: bool = False) -> ImageInfo:
    """Build (or return the cached) guest image for the current recipe."""
    say = progress or (lambda _msg: None)
    recipe, text = load_recipe()
    base = base_hash(text, helper_source())
    kernel_meta = recipe["kernel"]["package"]
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)

    try:
        kpkg, kver = resolve_kernel(kernel_meta, say, allow_update=False)
    except ImageBuildError:
        cached = find_guest_image(root)
        if cached is not None and not force:
            say(f"kernel version unknown to apt (no lists); using cached image {cached.root}")
            return cached
        ensure_host_tools(say)
        kpkg, kver = resolve_kernel(kernel_meta, say)
    rhash = full_hash(base, kpkg, kver)
    dest = root / rhash
    with FileLock(str(root / ".build.lock")):
        if (dest / "manifest.json").is_file() and not force:
            say(f"guest image {rhash} is cached at {dest}")
            return ImageInfo.load(dest)
        return _build(recipe, text, base, rhash, kpkg, kver, dest, say)


def _build(recipe: dict, text: str, base: str, rhash: str, kpkg: str, kver: str, dest: Path,
           say: Progress) -> ImageInfo:
    if os.geteuid() != 0:
        raise ImageBuildError("building the guest image needs root (debootstrap and chroot)")
    t0 = time.monotonic()
    ensure_host_tools(say)
    say(f"building guest image {rhash} (kernel {kpkg} {kver})")
    work = dest.parent / f".{rhash}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        timings: dict[str, float] = {}

        # 1. rootfs by debootstrap from apt's own mirror
        rf = recipe["rootfs"]
        mirror, suite = apt_mirror()
        suite = rf.get("suite", suite)
        cache = dest.parent / "cache" / "debs"
        cache.mkdir(parents=True, exist_ok=True)
        rootfs = work / "rootfs"
        t = time.monotonic()
        say(f"debootstrap {suite} ({rf.get('variant', 'minbase')}) from {mirror}: {' '.join(rf['packages'])}")
        _run(
            ["debootstrap", f"--variant={rf.get('variant', 'minbase')}", "--components=main",
             f"--include={','.join(rf['packages'])}", f"--cache-dir={cache}", suite, str(rootfs), mirror],
            progress=say, what="debootstrap",
        )
        timings["debootstrap_s"] = time.monotonic() - t

        # 2. kernel package: vmlinux + the modules the initramfs needs
        t = time.monotonic()
        say(f"downloading {kpkg}")
        debs = work / "debs"
        debs.mkdir()
        _run(["apt-get", "download", f"{kpkg}={kver}"], cwd=debs, what="apt-get download")
        deb = next(debs.glob("*.deb"))
        kroot = work / "kroot"
        _run(["dpkg-deb", "-x", str(deb), str(kroot)], what="dpkg-deb")
        abi = kpkg.removeprefix("linux-image-")
        vmlinuz = kroot / "boot" / f"vmlinuz-{abi}"
        data = vmlinuz.read_bytes()
        start = data.find(b"\xfd7zXZ\x00")
        if start < 0:
            raise ImageBuildError(f"{vmlinuz} is not an XZ bzImage; cannot extract vmlinux")
        vmlinux = lzma.LZMADecompressor().decompress(data[start:])
        if not vmlinux.startswith(b"\x7fELF"):
            raise ImageBuildError("extracted kernel is not an ELF vmlinux")
        (work / "vmlinux").write_bytes(vmlinux)
        del data, vmlinux
        busybox = next((p for p in (rootfs / "usr/bin/busybox", rootfs / "bin/busybox")
                        if p.is_file() and not p.is_symlink()), None)
        if busybox is None:
            raise ImageBuildError("busybox-static is missing from the rootfs (needed by the initramfs)")
        mods = _modules_closure(kroot / "lib" / "modules" / abi / "kernel", recipe["kernel"]["modules"])
        _make_initramfs(busybox, mods, work / "initramfs.img")
        timings["kernel_s"] = time.monotonic() - t

        # 3. the static helper (PID 1 + exec + sync), trimming, ext4 -> qcow2
        t = time.monotonic()
        (rootfs / "tmp" / "hearth-exec.c").write_text(helper_source())
        _run(["chroot", str(rootfs), "gcc", "-O2", "-static", "-o", HELPER_PATH, "/tmp/hearth-exec.c"],
             what="gcc hearth-exec")
        (rootfs / "tmp" / "hearth-exec.c").unlink()
        (rootfs / "var" / "lib" / "hearth").mkdir(parents=True, exist_ok=True)
        (rootfs / "workspace").mkdir(exist_ok=True)
        (rootfs / "etc" / "hostname").write_text("hearth\n")
        for rel in rf.get("strip", []):
            p = rootfs / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                p.mkdir()
            elif p.exists():
                p.unlink()
        raw = work / "rootfs.ext4"
        size = int(rf.get("size_mib", 4096))
        _run(["mkfs.ext4", "-q", "-F", "-L", "hearth-root", "-O", "^has_journal", "-E",
              "lazy_itable_init=0,lazy_journal_init=0", "-d", str(rootfs), str(raw), f"{size}M"],
             what="mkfs.ext4")
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "base.qcow2")],
             what="qemu-img convert")
        raw.unlink()
        shutil.rmtree(rootfs)
        shutil.rmtree(kroot)
        shutil.rmtree(debs)
        timings["pack_s"] = time.monotonic() - t

        build_s = time.monotonic() - t0
        manifest = {
            "recipe_hash": rhash,
            "base_hash": base,
            "kernel_package": kpkg,
            "kernel_version": kver,
            "kernel_file": "vmlinux",
            "cmdline": recipe["kernel"].get("cmdline", "console=ttyS0 quiet panic=-1"),
            "packages": list(rf["packages"]),
            "mirror": mirror,
            "suite": suite,
            "built_at": time.time(),
            "build_s": round(build_s, 1),
            "timings": {k: round(v, 1) for k, v in timings.items()},
            "sizes": {p.name: p.stat().st_size for p in work.iterdir() if p.is_file()},
            "recipe": text,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"guest image ready in {build_s:.1f} s: {dest}")
    _prune(dest.parent, keep=2)
    return ImageInfo.load(dest, built=True)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete images (each is ~0.5 GB)."""
    found = []
    for d in root.iterdir():
        try:
            found.append((json.loads((d / "manifest.json").read_text()).get("built_at", 0), d))
        except (OSError, ValueError):
            continue
    for _, d in sorted(found, reverse=True)[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m agent.sandbox.image", description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    def show(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        info = build_guest_image(progress=show, force=args.force)
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"root": str(info.root), "recipe_hash": info.recipe_hash, "built": info.built,
                      "build_s": info.build_s, "kernel_version": info.kernel_version}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
