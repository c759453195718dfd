"""Building the qemu sandbox's guest image from Debian packages only (``build_guest_image``).

* ``vmlinux``: the uncompressed kernel ELF out of Debian's ``linux-image-*-amd64`` package. QEMU
  boots it through its PVH note; under TCG that saves the ~5 s the in-guest XZ decompression of
  the bzImage costs (see shared/research/microvm.md).
* ``initramfs.img``: see ``agent.sandbox.image.initramfs``.
* ``base.qcow2``: an ext4 root filesystem made by ``debootstrap --variant=minbase`` with the
  packages of ``deploy/guest-image/recipe.toml`` (git, python3, make, gcc, qemu-guest-agent…)
  and ``/usr/local/sbin/hearth-exec`` (deploy/guest-image/hearth-exec.c, compiled static in the
  chroot): PID 1 (mounts, task cgroup limits, qemu-ga on virtio-serial) and the exec/sync helper.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from agent.sandbox.apt import main_archive
from agent.sandbox.image.cache import (
    HELPER_PATH,
    ImageBuildError,
    ImageInfo,
    base_hash,
    find_guest_image,
    full_hash,
    helper_source,
    images_dir,
    load_recipe,
    prune,
)
from agent.sandbox.image.initramfs import make_initramfs, modules_closure

Progress = Callable[[str], None]

HOST_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "dpkg-deb": "dpkg",
}


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
    found = main_archive()
    if found is None:
        raise ImageBuildError(
            "could not find the Debian mirror apt uses (apt-get indextargets gave nothing): "
            "run `apt-get update` first"
        )
    return found


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
        mods = modules_closure(kroot / "lib" / "modules" / abi / "kernel", recipe["kernel"]["modules"])
        make_initramfs(busybox, mods, work / "initramfs.img")
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
    prune(dest.parent, keep=2)
    return ImageInfo.load(dest, built=True)
