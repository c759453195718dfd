"""The host never writes through a link a sandbox left (scripted model, named so; real bwrap, real git).

The runner writes ``passes`` into the workspace's prd.json at each checkpoint. A step that replaced
that file (or its directory, or the lock file beside it) with a symbolic link into the user's
checkout must not get the host to write there: the README promises the checkout is never touched.
The FIFO and sparse-file cases of the same rule are in tests/sandbox_contract.py (every backend).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import git
import pytest
from tests_support import RecordingController, runner_for, spec_for

from agent.events import TerminationReason
from agent.models.scripted import ScriptedChat
from agent.progress import ProgressEntry, append_progress, read_progress
from agent.prompts import read_instructions
from agent.sandbox import SandboxConfig, SandboxError
from agent.sandbox.files import read_workspace_file, workspace_disk_bytes, write_workspace_file


def checkout_digest(project: Path) -> dict[str, str]:
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(project.rglob("*")) if p.is_file() and ".hearth" not in p.parts and ".git" not in p.parts}


@pytest.mark.parametrize("plant", [
    "rm tasks/prd.json && ln -s {project}/tasks/prd.json tasks/prd.json",
    "rm -rf tasks && ln -s {project}/tasks tasks",
    "ln -s {project}/hearth.toml tasks/prd.json.lock && ln -s {project}/README.md tasks/prd.json.tmp",
], ids=["prd-file-link", "prd-dir-link", "lock-file-link"])
def test_a_prd_link_into_the_users_checkout_is_never_written_through(greeting_project: Path, plant: str) -> None:
    before = checkout_digest(greeting_project)
    command = plant.format(project=greeting_project)
    model = ScriptedChat([{"name": "shell", "arguments": {"command": command}}])
    result = runner_for(spec_for(greeting_project, check="true"), RecordingController(), model).run()
    assert checkout_digest(greeting_project) == before, "the user's checkout was written"
    user = git.Repo(greeting_project)
    assert not user.is_dirty(untracked_files=True)
    if result.reason != TerminationReason.completed:  # refused: the step's error names the link
        assert result.reason == TerminationReason.error and "symbolic link" in result.message, result.message


def test_workspace_reads_and_writes_never_follow_links(tmp_path: Path) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    (outside / "f").write_text("host\n")
    (ws / "dir-link").symlink_to(outside)
    (ws / "file-link").symlink_to(outside / "f")
    for path in ("dir-link/f", "file-link"):
        with pytest.raises(SandboxError, match="symbolic link"):
            read_workspace_file(ws, path)
    with pytest.raises(SandboxError, match="symbolic link"):
        write_workspace_file(ws, "dir-link/f", b"x")
    write_workspace_file(ws, "file-link", b"replaced\n")  # the link itself is replaced
    assert (outside / "f").read_text() == "host\n" and (ws / "file-link").read_bytes() == b"replaced\n"
    assert not (ws / "file-link").is_symlink()
    with pytest.raises(SandboxError, match="inside the workspace"):
        read_workspace_file(ws, "../outside/f")


def test_no_file_outgrows_the_disk_limit_and_a_full_workspace_fails_its_step(greeting_project: Path) -> None:
    limits = SandboxConfig(disk_mib=64)
    huge = "fallocate -l 20G huge.bin; echo rc=$?; ls -s huge.bin 2>/dev/null | cut -d' ' -f1"
    fill = "for i in 1 2 3; do head -c 40M /dev/zero > fill$i.bin; done; echo done"
    model = ScriptedChat([{"name": "shell", "arguments": {"command": huge}},
                          {"name": "shell", "arguments": {"command": fill}}])
    result = runner_for(spec_for(greeting_project, check="true", limits=limits), RecordingController(), model).run()
    huge_reply = next(m["content"] for m in model.calls[1] if m["role"] == "tool")
    assert "rc=0" not in huge_reply, huge_reply  # a 20 GiB file is refused at once (RLIMIT_FSIZE)
    assert result.reason == TerminationReason.error, result
    assert "disk" in result.message and "64 MiB" in result.message, result.message


def test_disk_use_counts_allocated_blocks_once(tmp_path: Path) -> None:
    (tmp_path / "sparse").write_bytes(b"")
    os.truncate(tmp_path / "sparse", 2**30)  # 1 GiB apparent, nothing allocated
    (tmp_path / "data").write_bytes(b"x" * 2**20)
    os.link(tmp_path / "data", tmp_path / "hardlink")
    assert 2**20 <= workspace_disk_bytes(tmp_path) < 2 * 2**20


def test_prompt_inputs_and_progress_never_follow_links_out(tmp_path: Path) -> None:
    """The runner reads AGENTS.md and progress.md into the model's prompt and appends to progress.md:
    a link to a host file must not send that file to the model, nor get it written."""
    ws, secret = tmp_path / "ws", tmp_path / "secret.txt"
    (ws / ".ralph-tui").mkdir(parents=True)
    secret.write_text("host secret\n")
    (ws / "AGENTS.md").symlink_to(secret)
    (ws / ".ralph-tui" / "progress.md").symlink_to(secret)
    assert read_instructions(ws) == ("", "")
    assert read_progress(ws) == ""
    with pytest.raises(SandboxError, match="symbolic link"):
        append_progress(ws, ProgressEntry(step_id="S1", title="one"))
    (ws / ".ralph-tui" / "progress.md").unlink()
    append_progress(ws, ProgressEntry(step_id="S1", title="one"))
    assert secret.read_text() == "host secret\n" and "S1" in read_progress(ws)
