"""The guest's initramfs: a gzip'd newc cpio with a static busybox and the virtio/ext4 modules; its
``/init`` loads them and switch_roots into the root disk, handing over to ``hearth-exec init``.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from agent.sandbox.image.cache import INITRAMFS_INIT, ImageBuildError


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


def modules_closure(moddir: Path, wanted: list[str]) -> list[Path]:
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


def make_initramfs(busybox: Path, modules: list[Path], dest: Path) -> None:
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
