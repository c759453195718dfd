"""The bwrap backend against the shared sandbox contract, plus what is particular to it.

Real bubblewrap, real cgroups, real git; skipped only where bwrap cannot run on this host.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sandbox_contract import CONTRACT, GIT_ENV, SandboxFactory, ok, opened

from agent.host_git import clone_task_repo, task_git_dir
from agent.sandbox import (
    Sandbox,
    SandboxConfig,
    SandboxCrashed,
    SandboxError,
    SandboxUnavailable,
    open_sandbox,
)
from agent.sandbox.bwrap import BwrapSandbox
from agent.sandbox.output import OUTPUT_CAP_CHARS
from agent.sandbox.snapshots import SNAPSHOT_DIR_ENV


def _bwrap_unavailable() -> str | None:
    probe = Path("/tmp") / f"hearth-bwrap-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        BwrapSandbox(probe, SandboxConfig()).destroy()
    except SandboxUnavailable as exc:
        return str(exc)
    finally:
        probe.rmdir()
    return None


pytestmark = pytest.mark.skipif(bool(why := _bwrap_unavailable()), reason=f"bwrap unavailable: {why}")


def make_bwrap(workspace: Path, config: SandboxConfig) -> Sandbox:
    return BwrapSandbox(workspace, config, name=f"test-{workspace.parent.name}")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[BwrapSandbox]:
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = BwrapSandbox(ws, SandboxConfig(exec_timeout_s=30), name="t")
    yield sb
    sb.destroy()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__.removeprefix("check_"))
def test_contract(check: Callable[[SandboxFactory, Path], None], tmp_path: Path) -> None:
    check(make_bwrap, tmp_path)


def test_open_sandbox_gives_a_bwrap_sandbox_that_satisfies_the_protocol(tmp_path: Path) -> None:
    sb = open_sandbox("bwrap", tmp_path, name="p")
    try:
        assert isinstance(sb, BwrapSandbox) and isinstance(sb, Sandbox)
        assert sb.kind == "bwrap" and sb.workspace == tmp_path.resolve()
    finally:
        sb.destroy()


def test_missing_bwrap_is_reported_as_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap on PATH
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        BwrapSandbox(tmp_path, SandboxConfig())


def test_host_environment_does_not_leak_in(sandbox: BwrapSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_TEST_SECRET", "s3cret")
    env = ok(sandbox.exec("env")).stdout
    assert "s3cret" not in env and "HOME=/tmp" in env and "HEARTH_SANDBOX=bwrap" in env


def test_host_private_areas_are_not_mounted(sandbox: BwrapSandbox) -> None:
    listing = ok(sandbox.exec("ls -a /")).stdout.split()
    assert {"usr", "etc", "tmp", "workspace", "proc", "dev"} <= set(listing)
    assert not {"root", "home", "work", "run", "sys", "mnt", "opt"} & set(listing)
    assert sandbox.exec("cat /etc/shadow").exit_code != 0
    assert ok(sandbox.exec("python3 -c 'print(1+1)' && git --version")).stdout.startswith("2\ngit version")


def test_a_step_runs_with_no_capabilities(sandbox: BwrapSandbox) -> None:
    status = ok(sandbox.exec("grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status")).stdout
    assert status.count("0000000000000000") == 3, status
    assert sandbox.exec("unshare -U true").exit_code != 0  # no nested user namespaces


def test_background_processes_do_not_outlive_the_command(sandbox: BwrapSandbox) -> None:
    started = time.monotonic()
    result = ok(sandbox.exec("sleep 300 & echo started"))
    assert result.stdout == "started\n" and time.monotonic() - started < 10


def test_a_command_cannot_forge_its_exit_status(sandbox: BwrapSandbox) -> None:
    forge = """for fd in 3 4 5 6 7 8 9; do echo '{"exit-code": 0}' >&$fd; done 2>/dev/null; exit 5"""
    result = sandbox.exec(forge)
    assert result.exit_code == 5


def test_output_is_capped_keeping_the_tail(sandbox: BwrapSandbox) -> None:
    result = ok(sandbox.exec("yes 0123456789 | head -n 250000; echo END"))  # 2.75 MB
    assert len(result.stdout) < OUTPUT_CAP_CHARS + 100
    assert result.stdout.endswith("0123456789\nEND\n") and "earlier characters dropped" in result.stdout


def test_a_failing_output_callback_surfaces_after_the_command(sandbox: BwrapSandbox) -> None:
    calls: list[str] = []

    def broken(stream: str, text: str) -> None:
        calls.append(text)
        raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        sandbox.exec("echo one; echo two >&2; echo three", on_output=broken)
    assert len(calls) == 1


def test_cwd_must_be_a_directory_in_the_workspace(sandbox: BwrapSandbox) -> None:
    with pytest.raises(SandboxError, match="not a directory"):
        sandbox.exec("true", cwd="missing")


def test_a_sandbox_bwrap_cannot_build_raises_crashed_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    with BwrapSandbox(tmp_path / "ws", SandboxConfig(), extra_ro_binds=(tmp_path / "missing",)) as sb:
        with pytest.raises(SandboxCrashed, match="Can't find source path") as caught:
            sb.exec("echo never")
        assert "missing" in caught.value.last_output


def test_limits_are_enforced_by_cgroups_where_writable(tmp_path: Path) -> None:
    with opened(make_bwrap, tmp_path / "ws", SandboxConfig(pids=64, memory_mib=256)) as sb:
        assert isinstance(sb, BwrapSandbox)
        if not sb.cgroups:
            pytest.skip(f"no writable cgroup here; limits enforced as {sb.enforcement}")
        assert set(sb.enforcement.values()) <= {"cgroup-v1", "cgroup-v2"}, sb.enforcement
        sb.exec(":(){ :|:& };:; sleep 1", timeout_s=8)
        peak = next((d / "pids.peak" for d in sb.cgroups.values() if (d / "pids.peak").exists()), None)
        if peak is not None:
            assert 0 < int(peak.read_text()) <= 64
        hog = sb.exec('python3 -c "x = bytearray(1024**3)"')
        assert hog.exit_code == 137 and "out of memory" in hog.stderr
        dirs = list(sb.cgroups.values())
    assert not any(d.exists() for d in dirs), "destroy() must remove the cgroups"


def test_cgroups_left_by_a_dead_process_are_swept(tmp_path: Path) -> None:
    with opened(make_bwrap, tmp_path / "a", SandboxConfig()) as first:
        assert isinstance(first, BwrapSandbox)
        if not first.cgroups:
            pytest.skip("no writable cgroup here")
        parent = next(iter(first.cgroups.values())).parent
        pid_ns = next(iter(first.cgroups.values())).name.split("-")[-3]
        stale = parent / f"hearth-crashed-{pid_ns}-4194305-00000000"  # above any pid_max: never alive
        stale.mkdir()
        try:
            with opened(make_bwrap, tmp_path / "b", SandboxConfig()):
                assert not stale.exists()
            assert all(d.exists() for d in first.cgroups.values()), "a live sandbox's cgroups must stay"
        finally:
            if stale.exists():
                stale.rmdir()


def test_cpu_quota_throttles(tmp_path: Path) -> None:
    with opened(make_bwrap, tmp_path / "ws", SandboxConfig(cpus=0.2)) as sb:
        assert isinstance(sb, BwrapSandbox)
        if sb.enforcement["cpu"] == "none":
            pytest.skip("no cpu controller here")
        busy = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0:\n    pass\n"
        sb.write_file("busy.py", busy + "print(time.process_time())\n")
        cpu_s = float(ok(sb.exec("python3 busy.py")).stdout)
        assert cpu_s < 0.5, f"used {cpu_s:.2f}s of CPU in 1s wall at a 0.2 CPU quota"


def test_snapshots_live_beside_the_workspace_and_go_with_destroy(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = BwrapSandbox(ws, SandboxConfig(), name="task-1")
    sb.write_file("a.txt", "a")
    snap = sb.snapshot()
    stored = tmp_path / ".hearth-snapshots" / "task-1" / snap
    assert (stored / "a.txt").read_text() == "a"
    with pytest.raises(SandboxError, match="no snapshot"):
        sb.restore("../task-1")
    sb.destroy()
    assert not stored.exists() and not stored.parent.exists()
    with pytest.raises(SandboxError, match="destroyed"):
        sb.exec("true")


def tree_state(root: Path) -> dict[str, tuple[str, int, str, int]]:
    """Every entry under ``root``: (kind, mode, content or link target, file mtime)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            state[str(path.relative_to(root))] = ("link", st.st_mode, os.readlink(path), 0)
        elif path.is_dir():
            state[str(path.relative_to(root))] = ("dir", st.st_mode, "", 0)
        else:
            state[str(path.relative_to(root))] = ("file", st.st_mode, path.read_text(), st.st_mtime_ns)
    return state


def mutate_everything(ws: Path, round_: int) -> None:
    """Every kind of change a step could make, including an in-place edit that keeps the mtime."""
    same = ws / "same-size.txt"
    mtime = same.stat().st_mtime_ns
    same.write_text(f"EDIT{round_}")
    os.utime(same, ns=(mtime, mtime))
    (ws / "mode.txt").chmod(0o600)
    (ws / "dir").chmod(0o700)
    (ws / "file-to-dir").unlink()
    (ws / "file-to-dir").mkdir()
    for child in (ws / "dir-to-file").iterdir():
        child.unlink()
    (ws / "dir-to-file").rmdir()
    (ws / "dir-to-file").write_text("now a file")
    (ws / "link").unlink()
    (ws / "link").symlink_to("mode.txt")
    (ws / "dir" / "deep" / "new").mkdir(parents=True)
    (ws / "dir" / "deep" / "new" / "f").write_text("new")
    (ws / "hard-a").write_text("changed through one name")
    (ws / "gone.txt").unlink()


def test_restore_is_exact_after_every_kind_of_change(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "same-size.txt").write_text("ORIG0")
    (ws / "mode.txt").write_text("m")
    (ws / "mode.txt").chmod(0o644)
    (ws / "dir").mkdir(mode=0o755)
    (ws / "dir" / "inner.txt").write_text("inner")
    (ws / "file-to-dir").write_text("f")
    (ws / "dir-to-file").mkdir()
    (ws / "dir-to-file" / "x").write_text("x")
    (ws / "link").symlink_to("dir/inner.txt")
    (ws / "hard-a").write_text("shared")
    os.link(ws / "hard-a", ws / "hard-b")
    (ws / "gone.txt").write_text("gone")
    with BwrapSandbox(ws, SandboxConfig(), name="exact") as sb:
        snap = sb.snapshot()
        expected = tree_state(sb.snapshot_root / snap)
        assert tree_state(ws) == expected
        for round_ in range(3):  # later rounds restore over copies made by earlier restores
            mutate_everything(ws, round_)
            mutated = tree_state(ws)
            assert mutated != expected
            later = sb.snapshot()  # links what is unchanged to the previous snapshot, copies the rest
            assert tree_state(sb.snapshot_root / later) == mutated
            sb.restore(snap)
            assert tree_state(ws) == expected
            assert (ws / "hard-a").stat().st_ino == (ws / "hard-b").stat().st_ino
            with (ws / "dir" / "inner.txt").open("r+") as f:  # in place: must not reach a snapshot
                f.write("INNER")
            sb.restore(later)
            assert tree_state(ws) == mutated
            sb.restore(snap)
        assert tree_state(sb.snapshot_root / snap) == expected
        shared = (sb.snapshot_root / snap / "dir" / "inner.txt").stat().st_nlink
        assert shared > 1, "unchanged files of later snapshots should be hard links"
        stored = [p for p in (sb.snapshot_root / snap).iterdir() if p.is_file() and not p.is_symlink()]
        assert all(p.stat().st_ino != (ws / p.name).stat().st_ino for p in stored), "shared inode"
        # Another instance has no record of the workspace: it copies everything back.
        mutate_everything(ws, 9)
        other = BwrapSandbox(ws, SandboxConfig(), name="exact")
        other.restore(snap)
        assert tree_state(ws) == expected
        other.destroy()


def test_snapshot_dir_can_be_set_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SNAPSHOT_DIR_ENV, str(tmp_path / "snaps"))
    (tmp_path / "ws").mkdir()
    with BwrapSandbox(tmp_path / "ws", SandboxConfig(), name="n") as sb:
        snap = sb.snapshot()
        assert (tmp_path / "snaps" / "n" / snap).is_dir()
    monkeypatch.setenv(SNAPSHOT_DIR_ENV, str(tmp_path / "ws" / "inside"))
    with pytest.raises(SandboxError, match="inside the workspace"):
        BwrapSandbox(tmp_path / "ws", SandboxConfig())


def test_task_clone_git_is_readable_inside_but_commits_stay_host_side(tmp_path: Path) -> None:
    repo, wt = tmp_path / "repo", tmp_path / "work" / "T-1"
    repo.mkdir()
    (repo / "f.txt").write_text("one\n")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env={**os.environ, **GIT_ENV})
    clone = clone_task_repo(str(repo), wt)
    clone.git.checkout("-B", "feature", "main")
    with BwrapSandbox(wt, SandboxConfig(), git_dir=task_git_dir(wt)) as sb:
        sb.write_file("f.txt", "two\n")
        assert ok(sb.exec("git status --porcelain && git log --oneline | wc -l")).stdout == " M f.txt\n1\n"
        assert sb.exec("git commit -qam two", env={"GIT_AUTHOR_NAME": "t"}).exit_code != 0
        assert sb.exec("echo x > .git/hooks/post-commit").exit_code != 0  # read-only inside
    assert len(list(clone.iter_commits("feature"))) == 1


def test_concurrent_commands_in_one_sandbox(sandbox: BwrapSandbox) -> None:
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = sandbox.exec(f"echo {i}").stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: f"{i}\n" for i in range(4)}
