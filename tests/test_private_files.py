"""The state dir, its tokens and the store are private from their first moment, whatever the umask
(issue 13 found the dir 0755 and hearth.db 0644)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import ProjectConfig
from cluster import local
from cluster.private_files import ensure_token_file, write_private
from cluster.store import Store


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 0: whatever a creator does not restrict itself is readable (and writable) by everyone."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_dir_is_made_0700(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None) -> None:
    monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path / "state"))
    assert mode(local.state_dir()) == 0o700


def test_the_store_and_its_journal_are_made_0600(tmp_path: Path, open_umask: None) -> None:
    store = Store(tmp_path / "state" / "hearth.db")
    try:
        store.put_project("/nowhere", ProjectConfig(name="p"))  # a write: the WAL file exists now
        assert mode(tmp_path / "state") == 0o700
        assert mode(tmp_path / "state" / "hearth.db") == 0o600
        assert mode(tmp_path / "state" / "hearth.db-wal") == 0o600
    finally:
        store.close()


def test_tokens_are_made_0600_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None) -> None:
    monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path / "state"))
    admin = local.ensure_token(local.state_dir())
    assert mode(local.token_path()) == 0o600 and len(admin) >= 32
    assert local.ensure_token(local.state_dir()) == admin
    plugin = ensure_token_file(tmp_path / "plugin-token")
    assert mode(tmp_path / "plugin-token") == 0o600 and plugin != admin
    write_private(tmp_path / "gateway-token", "secret\n")
    assert mode(tmp_path / "gateway-token") == 0o600
    assert (tmp_path / "gateway-token").read_text() == "secret\n"
    assert not list(tmp_path.glob("*.partial"))
