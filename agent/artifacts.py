"""Build artifacts: what a step leaves besides its commit (``dist/``, ``site/``, a Docker image).

An artifact is a blob in a content-addressed store, named by its sha256, with its size. A file is
stored as is; a directory as a tar with fixed owners and times (so the same tree always gives the
same sha256). The head's store (cluster/artifact_store.py) and the in-process one here share
``ContentStore``: bytes stream into a temporary file beside the store, the sha256 and size are
checked, and only then is the file renamed into place, so a store never holds half a blob.

How bytes reach a store is a seam (``ArtifactSink``): in-process runners write straight into a
``ContentStore``; Ray attempts hand chunks to the scheduler on the head through Ray's object store
(cluster/task_actor.py), because boxes share no filesystem.

Errors: ``ArtifactError`` (a ``ValueError``) names the artifact and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

CHUNK = 8 << 20
"""Bytes per read/write and per Ray object when an artifact travels to the head."""


class ArtifactError(ValueError):
    """An artifact that cannot be kept: missing, a symlink out of the workspace, too large…"""


class ArtifactRef(BaseModel):
    """One stored artifact, as listed on the approval card, in ``hearth show`` and the API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Unique within a checkpoint: the kept path (``dist``) or ``image``."""
    kind: Literal["file", "directory", "image"]
    sha256: str
    """Of the stored bytes (the file, the directory's tar, or the image's ``docker save`` tar)."""
    size: int
    path: str = ""
    """The workspace path it was kept from (empty for an image)."""
    image_id: str = ""
    image_tag: str = ""
    pushed_to: str = ""
    """Where the image was pushed (``registry/repo:tag``), if the project pushes images."""
    stored: bool = True
    """False for an image that lives only in the node's engine (no ``docker save``, no push)."""

    def filename(self) -> str:
        """What ``hearth artifacts`` saves it as."""
        return f"{self.name}.tar" if self.kind in ("directory", "image") else self.name


class StagedArtifact(BaseModel):
    """An artifact packed on the node, waiting to go to a store at the checkpoint."""

    ref: ArtifactRef
    file: str
    """Node-local path of the packed bytes (empty when there are none, e.g. an engine-only image)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


class ContentStore:
    """Blobs under ``root/sha256/<first two hex>/<sha256>``; writes are all-or-nothing."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArtifactError(f"not a sha256: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_of(sha256).exists()

    def put(self, chunks: Iterable[bytes], *, sha256: str, size: int, name: str) -> Path:
        """Store ``chunks``; they must add up to ``size`` bytes hashing to ``sha256``."""
        blob = self.open_blob(sha256=sha256, size=size, name=name)
        try:
            for chunk in chunks:
                blob.write(chunk)
            return blob.commit()
        finally:
            blob.abort()

    def open_blob(self, *, sha256: str, size: int, name: str) -> BlobWriter:
        return BlobWriter(self.path_of(sha256), sha256=sha256, size=size, name=name)


class BlobWriter:
    """One blob being written: ``write`` chunks, then ``commit`` (verify, rename) or ``abort``."""

    def __init__(self, final: Path, *, sha256: str, size: int, name: str) -> None:
        self.final, self.sha256, self.size, self.name = final, sha256, size, name
        self.exists = final.exists()
        """Already stored (same bytes, same name): the chunks are read and dropped."""
        self.partial = final.with_name(f".{sha256}.{os.getpid()}.{id(self)}.partial")
        self.digest = hashlib.sha256()
        self.written = 0
        self.handle = None
        if not self.exists:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.partial, "wb")  # noqa: SIM115 (closed by commit/abort)

    def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.written += len(chunk)
        if self.handle is not None:
            self.handle.write(chunk)

    def commit(self) -> Path:
        if self.written != self.size or self.digest.hexdigest() != self.sha256:
            raise ArtifactError(
                f"artifact {self.name}: received {self.written} bytes with sha256 {self.digest.hexdigest()[:12]}…, "
                f"expected {self.size} bytes with sha256 {self.sha256[:12]}…; nothing stored")
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None
            os.replace(self.partial, self.final)
        return self.final

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.partial.unlink(missing_ok=True)


class ArtifactSink(Protocol):
    """Where a runner's artifacts go (one seam: a local store in tests, the head through Ray)."""

    def store(self, staged: StagedArtifact) -> ArtifactRef:
        """Store the staged bytes (verified by sha256 and size) and return the reference."""
        ...


class LocalArtifactSink:
    """Stores straight into a ``ContentStore`` on this machine (in-process runners, benchmarks)."""

    def __init__(self, root: Path) -> None:
        self.store_ = ContentStore(root)

    def store(self, staged: StagedArtifact) -> ArtifactRef:
        if staged.file:
            self.store_.put(read_chunks(Path(staged.file)), sha256=staged.ref.sha256, size=staged.ref.size,
                            name=staged.ref.name)
        return staged.ref


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def check_artifact_path(workspace: Path, relpath: str) -> Path:
    """The host path of a kept path; ``ArtifactError`` if it is absent or leaves the workspace."""
    root = workspace.resolve()
    if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
        raise ArtifactError(f"artifact {relpath}: give a path inside the workspace (no '..', not absolute)")
    literal = root / relpath
    if not literal.exists() and not literal.is_symlink():
        raise ArtifactError(f"artifact {relpath}: the build did not produce it (no such file or directory)")
    target = literal.resolve()
    if not _inside(root, target):
        raise ArtifactError(f"artifact {relpath}: a symlink out of the workspace (to {target}); refused")
    return literal


def pack(workspace: Path, relpath: str, out_dir: Path, *, max_bytes: int) -> StagedArtifact:
    """Pack one kept path into ``out_dir`` (a file as is, a directory as a reproducible tar)."""
    source = check_artifact_path(workspace, relpath)
    root = workspace.resolve()
    name = relpath.strip("/").rstrip("/") or "workspace"
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        members = _walk(root, source, name)
        total = sum(p.lstat().st_size for p in members if p.is_file() and not p.is_symlink())
        if total > max_bytes:
            raise ArtifactError(f"artifact {name}: {total} bytes is over the limit of {max_bytes} bytes")
        target = out_dir / (name.replace("/", "_") + ".tar")
        _write_tar(target, root, members)
        kind: Literal["file", "directory"] = "directory"
    else:
        size = source.resolve().stat().st_size
        if size > max_bytes:
            raise ArtifactError(f"artifact {name}: {size} bytes is over the limit of {max_bytes} bytes")
        target = out_dir / name.replace("/", "_")
        with open(source.resolve(), "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
        kind = "file"
    ref = ArtifactRef(name=name, kind=kind, sha256=sha256_file(target), size=target.stat().st_size, path=relpath)
    return StagedArtifact(ref=ref, file=str(target))


def _walk(root: Path, top: Path, name: str) -> list[Path]:
    """Every entry under ``top`` in a fixed order; a symlink leading out of the workspace is refused."""
    found = [top]
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = Path(dirpath) / entry
            if path.is_symlink() and not _inside(root, path.resolve()):
                rel = path.relative_to(root)
                raise ArtifactError(f"artifact {name}: {rel} is a symlink out of the workspace; refused")
            found.append(path)
    return sorted(set(found))


def _write_tar(target: Path, root: Path, members: list[Path]) -> None:
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=normalise)


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Unpack a directory artifact (only regular files, directories and in-tree links)."""
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
