"""One command per box, without a cluster: the head's config file, the checks a box makes before it
joins (each a clear error naming the box, the head and the cause, never a wait without end), the
flags a node advertises, and the systemd units. The last test needs Ray: a box whose Hearth differs
from the head's gets no tasks."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.config import ConfigError
from cluster.cli import app
from cluster.head_config import load_head_config, parse_head_config
from cluster.node_join import JoinError, hearth_version, install_token, parse_address, refusal
from cluster.nodes import NodeInventory, ray_start_args

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_head_config_sets_the_cluster_policy_and_names_unknown_keys(tmp_path: Path) -> None:
    config = parse_head_config('[head]\nhost = "192.168.1.10"\nslots = 0\n\n[scheduler]\naging_s = 60\n'
                               'preempt_after_s = 30\n')
    assert config.head.host == "192.168.1.10" and config.head.slots == 0
    assert config.scheduler.aging_s == 60 and config.scheduler.preempt_after_s == 30
    with pytest.raises(ConfigError, match=r"head\.toml: unknown key 'scheduler\.aging'"):
        parse_head_config("[scheduler]\naging = 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'head\.slot'"):
        parse_head_config("[head]\nslot = 1\n")
    with pytest.raises(ConfigError, match=r"key 'head\.slots'"):
        parse_head_config("[head]\nslots = -1\n")
    with pytest.raises(ConfigError, match="priority_ceiling must exceed"):
        parse_head_config("[scheduler]\npriority_ceiling = 120\nresume_bonus = 50\n")
    assert load_head_config(None, tmp_path).scheduler.aging_s == 300  # no file: the defaults
    (tmp_path / "head.toml").write_text("[scheduler]\naging_s = 7\n")
    assert load_head_config(None, tmp_path).scheduler.aging_s == 7  # <state dir>/head.toml
    with pytest.raises(ConfigError, match="cannot read"):
        load_head_config(tmp_path / "missing.toml", tmp_path)


def test_hearth_up_refuses_a_bad_head_config_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "head.toml"
    bad.write_text("[scheduler]\nagin_s = 5\n")
    done = CliRunner().invoke(app, ["up", "--config", str(bad)])
    assert done.exit_code == 2, done.output
    assert f"{bad}: unknown key 'scheduler.agin_s'" in done.output
    assert not (Path(os.environ["HEARTH_STATE_DIR"]) / "up.json").exists()


def test_a_pure_head_advertises_no_slots_and_every_node_its_versions() -> None:
    cpu_box = NodeInventory(hostname="nas", cpus=4, memory_mib=8000)
    head = ray_start_args(cpu_box, slots=0, extra_labels={"hearth-role": "head"})
    assert head[0] == "--num-cpus=0" and '--resources={}' in head
    labels = dict(pair.split("=", 1) for pair in head[-1].removeprefix("--labels=").split(","))
    assert labels["hearth-role"] == "head" and labels["hearth-version"] == hearth_version()
    assert labels["ray-version"] == __import__("ray").__version__
    assert '--resources={"hearth_slots": 4}' in ray_start_args(cpu_box)
    assert '--resources={"hearth_slots": 2}' in ray_start_args(cpu_box, slots=2)
    # Ray label values: at most 63 characters of [A-Za-z0-9._-].
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,63}", hearth_version())


def test_a_box_whose_hearth_differs_is_refused() -> None:
    mine, ray_version = hearth_version(), "2.60.0"
    assert refusal({}, mine, ray_version) is None  # a node started by hand with plain `ray start`
    assert refusal({"hearth-version": mine, "ray-version": ray_version}, mine, ray_version) is None
    assert refusal({"hearth-version": "0-other"}, mine, ray_version) == f"runs Hearth 0-other, the head runs {mine}"
    assert "runs Ray 2.59.0" in str(refusal({"ray-version": "2.59.0"}, mine, ray_version))


def node_start(*args: str) -> Any:
    return CliRunner().invoke(app, ["node", "start", *args])


def test_bad_head_addresses_are_refused_with_the_reason() -> None:
    assert parse_address("192.168.1.10:6379") == ("192.168.1.10", 6379)
    for address in ("192.168.1.10", "head:port", ":6379", "h:70000"):
        with pytest.raises(JoinError, match="give the head as HOST:PORT"):
            parse_address(address)
    done = node_start("--address", "127.0.0.1:6379")
    assert done.exit_code == 2 and "serves this machine only" in done.output, done.output
    done = node_start("--address", "127.0.0.9:6379")
    assert done.exit_code == 2 and "no cluster token" in done.output and "--token-file" in done.output
    assert f"box {socket.gethostname()}" in done.output


def test_a_box_that_cannot_reach_the_head_fails_fast_naming_both(tmp_path: Path) -> None:
    token = tmp_path / "ray-token"
    token.write_text("not-the-head's\n")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.9", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    done = node_start("--address", f"127.0.0.9:{port}", "--token-file", str(token), "--timeout", "2")
    assert done.exit_code == 3, done.output
    assert f"box {socket.gethostname()} cannot reach the head at 127.0.0.9:{port}" in done.output
    assert "refused" in done.output.lower()
    assert time.monotonic() - started < 60  # bounded by --timeout, never a retry loop without end
    copied = Path(os.environ["HEARTH_STATE_DIR"]) / "ray-token"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600 and copied.read_text() == "not-the-head's\n"


def test_rays_sessions_go_where_its_socket_paths_fit(tmp_path: Path) -> None:
    from cluster.node_start import ray_temp_dir

    assert ray_temp_dir(Path("/var/lib/hearth")) == Path("/var/lib/hearth/ray")
    deep = tmp_path / ("a-long-state-directory-name" * 3)
    short = ray_temp_dir(deep)
    # Ray's deepest socket: <temp dir>/session_2026-12-01_06-14-55_650085_32080/sockets/plasma_store
    assert len(f"{short}/session_2026-12-01_06-14-55_650085_32080/sockets/plasma_store") <= 107
    assert short != ray_temp_dir(tmp_path / ("another-long-state-directory" * 3))
    assert stat.S_IMODE(short.stat().st_mode) == 0o700


def test_the_token_file_is_checked_and_copied_private(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(JoinError, match="is empty"):
        install_token(tmp_path, empty, "box-a")
    with pytest.raises(JoinError, match="cannot read"):
        install_token(tmp_path, tmp_path / "nope", "box-a")
    given = tmp_path / "given"
    given.write_text("secret\n")
    state = tmp_path / "state"
    state.mkdir()
    path = install_token(state, given, "box-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert install_token(state, None, "box-a") == path  # a later start reuses the box's copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """deploy/systemd units pass systemd's own checker (with the hearth executable they name made real)."""
    hearth = tmp_path / "hearth"
    hearth.write_text("#!/bin/sh\n")
    hearth.chmod(0o755)
    for name in ("hearth-head.service", "hearth-box.service"):
        text = (DEPLOY / "systemd" / name).read_text()
        assert "/opt/hearth/venv/bin/hearth" in text and "--block" in text
        unit = tmp_path / name
        unit.write_text(text.replace("/opt/hearth/venv/bin/hearth", str(hearth)))
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True,
                              text=True, timeout=60)
        problems = [line for line in (done.stdout + done.stderr).splitlines()
                    if str(unit) in line or name in line]
        assert done.returncode == 0 and not problems, done.stdout + done.stderr


@pytest.mark.ray
def test_the_scheduler_places_nothing_on_a_node_running_another_hearth(ray_cluster: Any, scheduler: Any,
                                                                        greeting_project: Path) -> None:
    import ray
    from tests_support import configure

    other = ray_cluster.add_node(num_cpus=1, resources={"hearth_slots": 1},
                                 labels={"hearth-version": "0-other", "pool": "mismatch"})
    ray_cluster.wait_for_nodes()
    try:
        nodes = {n["node_id"]: n for n in ray.get(scheduler.nodes.remote())}
        assert nodes[other.node_id]["refused"] == f"runs Hearth 0-other, the head runs {hearth_version()}"
        configure(greeting_project, allowed_nodes=["pool=mismatch"])
        with pytest.raises(ray.exceptions.RayTaskError, match=r"no node can ever run this task.*runs Hearth 0-other"):
            ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, None, "scripted:demo"))
    finally:
        ray_cluster.remove_node(other)
