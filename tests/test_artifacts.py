"""Build artifacts on one node: real git, real bwrap, real make; scripted models (named so)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import git
import pytest
from tests_support import RecordingController, configure, runner_for, spec_for

from agent.artifacts import ArtifactError, ContentStore, pack
from agent.build import ArtifactsConfig, StepBuilder
from agent.events import BuildRan, CheckpointReady, TerminationReason
from agent.project import reset_workspace

MAKEFILE = "dist:\n\tmkdir -p dist\n\tcat hello.txt > dist/greeting.txt\n\techo built by make > dist/VERSION\n"


def with_build(project: Path, **artifacts: object) -> None:
    (project / "Makefile").write_text(MAKEFILE)
    with open(project / ".gitignore", "a") as handle:
        handle.write("dist/\n")
    repo = git.Repo(project)
    repo.git.add("-A")
    repo.git.commit("-m", "a Makefile", author="t <t@t>")
    configure(project, artifacts=ArtifactsConfig.model_validate(artifacts))


def test_a_step_build_keeps_dist_stored_by_sha256(greeting_project: Path) -> None:
    with_build(greeting_project, build="make dist", paths=["dist"])
    controller = RecordingController()
    result = runner_for(spec_for(greeting_project), controller).run()
    assert result.reason == TerminationReason.completed, result.message
    builds = [e for e in controller.events if isinstance(e, BuildRan)]
    assert [b.passed for b in builds] == [True, True]
    cards = [e for e in controller.events if isinstance(e, CheckpointReady)]
    assert [[a.name for a in c.artifacts] for c in cards] == [["dist"], ["dist"]]
    ref = cards[-1].artifacts[0]
    blob = ContentStore(greeting_project / ".hearth" / "artifacts").path_of(ref.sha256)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == ref.sha256 and blob.stat().st_size == ref.size
    with tarfile.open(blob) as tar:
        assert sorted(tar.getnames()) == ["dist", "dist/VERSION", "dist/greeting.txt"]
        member = tar.extractfile("dist/greeting.txt")
        assert member is not None and member.read() == b"hello\n"
    # dist/ is ignored by git: the build's output is an artifact, not part of the commit
    assert "dist/VERSION" not in git.Repo(greeting_project).git.ls_tree("-r", "--name-only", "hearth/T-7")


def test_a_failing_build_fails_the_step_like_a_failing_check(greeting_project: Path) -> None:
    with_build(greeting_project, build="echo compiler says no; exit 3", paths=["dist"])
    spec = spec_for(greeting_project)
    spec.config.budget.max_turns = 4
    controller = RecordingController()
    result = runner_for(spec, controller).run()
    assert result.reason == TerminationReason.budget
    assert "the last build failed: build `echo compiler says no; exit 3` failed with exit code 3" in result.message
    builds = [e for e in controller.events if isinstance(e, BuildRan)]
    assert builds and not any(b.passed for b in builds) and "compiler says no" in builds[0].output_tail
    assert not any(isinstance(e, CheckpointReady) for e in controller.events)
    assert not (greeting_project / ".hearth" / "artifacts").exists()  # nothing half-stored


@pytest.mark.parametrize(("artifacts", "problem"), [
    ({"build": "true", "paths": ["site"]}, "artifact site: the build did not produce it"),
    ({"build": "no-such-build-tool", "paths": []}, "failed with exit code 127 (command not found)"),
    ({"build": "sleep 30", "build_timeout_s": 1}, "build `sleep 30` timed out after 1 s"),
    ({"build": "make dist", "paths": ["dist"], "max_bytes": 4}, "artifact dist: 20 bytes is over the limit of 4 bytes"),
])
def test_bad_builds_are_step_errors_naming_the_artifact(greeting_project: Path, artifacts: dict[str, object],
                                                        problem: str) -> None:
    with_build(greeting_project, **artifacts)
    spec = spec_for(greeting_project)
    spec.config.budget.max_turns = 3
    controller = RecordingController()
    result = runner_for(spec, controller).run()
    assert result.reason == TerminationReason.budget and problem in result.message, result.message
    assert not (greeting_project / ".hearth" / "artifacts").exists()


def test_a_symlink_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "dist").mkdir(parents=True)
    (workspace / "dist" / "ok.txt").write_text("fine")
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    (workspace / "dist" / "leak").symlink_to(secret)
    (workspace / "link").symlink_to(secret)
    with pytest.raises(ArtifactError, match="artifact dist: dist/leak is a symlink out of the workspace"):
        pack(workspace, "dist", tmp_path / "out", max_bytes=1 << 20)
    with pytest.raises(ArtifactError, match="artifact link: a symlink out of the workspace"):
        pack(workspace, "link", tmp_path / "out", max_bytes=1 << 20)
    with pytest.raises(ArtifactError, match=r"give a path inside the workspace"):
        pack(workspace, "../secret", tmp_path / "out", max_bytes=1 << 20)


def test_packing_is_reproducible_and_files_are_kept_as_is(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "site" / "css").mkdir(parents=True)
    (workspace / "site" / "index.html").write_text("<h1>hi</h1>")
    (workspace / "site" / "css" / "a.css").write_text("h1{}")
    first = pack(workspace, "site", tmp_path / "one", max_bytes=1 << 20)
    os.utime(workspace / "site" / "index.html", (1, 1))  # times and owners do not change the hash
    second = pack(workspace, "site", tmp_path / "two", max_bytes=1 << 20)
    assert first.ref.sha256 == second.ref.sha256 and first.ref.kind == "directory"
    (workspace / "app.bin").write_bytes(b"\x00binary")
    single = pack(workspace, "app.bin", tmp_path / "three", max_bytes=1 << 20)
    assert single.ref.kind == "file" and single.ref.sha256 == hashlib.sha256(b"\x00binary").hexdigest()


def test_the_store_keeps_nothing_that_does_not_match(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    data = b"x" * 1000
    good = hashlib.sha256(data).hexdigest()
    with pytest.raises(ArtifactError, match="expected 1000 bytes"):
        store.put([data[:500]], sha256=good, size=1000, name="dist")
    assert not store.has(good) and list((tmp_path / "store").rglob("*partial*")) == []
    assert store.put([data[:500], data[500:]], sha256=good, size=1000, name="dist").read_bytes() == data


def test_reset_keeps_the_build_outputs_it_is_told_to(greeting_project: Path, tmp_path: Path) -> None:
    clone = git.Repo.clone_from(str(greeting_project), str(tmp_path / "clone"))
    (tmp_path / "clone" / "dist").mkdir()
    (tmp_path / "clone" / "dist" / "app").write_text("built")
    (tmp_path / "clone" / "junk.txt").write_text("junk")
    reset_workspace(clone, clone.head.commit.hexsha, keep=["dist/"])
    assert (tmp_path / "clone" / "dist" / "app").exists() and not (tmp_path / "clone" / "junk.txt").exists()
    reset_workspace(clone, clone.head.commit.hexsha)
    assert not (tmp_path / "clone" / "dist").exists()


def test_image_tags_are_docker_safe(tmp_path: Path) -> None:
    builder = StepBuilder(ArtifactsConfig.model_validate({"image": {"dockerfile": "Dockerfile"}}),
                          project="My Project", task_id="T-12", workspace=tmp_path, staging=tmp_path / "s")
    assert builder.image_tag("US-001") == "my-project:T-12-US-001"
    registry = StepBuilder(ArtifactsConfig.model_validate({"image": {"tag": "127.0.0.1:5000/app:{step}"}}),
                           project="p", task_id="T-1", workspace=tmp_path, staging=tmp_path / "s")
    assert registry.image_tag("US 2") == "127.0.0.1:5000/app:US-2"
