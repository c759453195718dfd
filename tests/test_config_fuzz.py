"""Hypothesis over hearth.toml and the model catalogue: any input gives a config or the module's own
error (ConfigError, CatalogueError) naming the problem; nothing else ever escapes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_config, parse_config
from agent.models.catalogue import CatalogueError, load_catalogue, parse_catalogue

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

EDGES = st.sampled_from([0, -1, 1, 0.5, 2**63, 10**400, 1e308, math.inf, -math.inf, math.nan])
NUMBERS = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.booleans() | EDGES | EDGES)
SCALARS = NUMBERS | st.text(max_size=8) | st.none()
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def mostly(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything."""
    return st.one_of(strategy, strategy, strategy, VALUES)


def toml_text(value: dict[str, Any]) -> str | None:
    """``value`` as TOML, or None where TOML cannot say it (None values, mixed arrays…)."""
    try:
        return tomli_w.dumps(value)
    except (TypeError, ValueError):
        return None


HEARTH_TOML = st.fixed_dictionaries(
    {"name": mostly(st.text(max_size=8))},
    optional={
        "base_priority": mostly(st.integers(-5, 120)),
        "max_priority": mostly(st.integers(-5, 120)),
        "approval": mostly(st.sampled_from(["each-step", "final", "none", "always"])),
        "approval_timeout_s": NUMBERS,
        "approval_timeout_action": mostly(st.sampled_from(["approve", "reject", "cancel"])),
        "model": mostly(st.sampled_from(["embedded:smollm2-135m", "docker:qwen", "openai:x", ":"])),
        "check": mostly(st.text(max_size=8)),
        "sandbox": mostly(st.sampled_from(["bwrap", "qemu", "docker", "vm"])),
        "concurrency": NUMBERS,
        "max_attempts": NUMBERS,
        "allowed_nodes": mostly(st.lists(st.text(max_size=4), max_size=2)),
        "approvers": mostly(st.lists(st.text(max_size=4), max_size=2)),
        "limits": mostly(st.dictionaries(st.sampled_from(["cpus", "memory_mib", "pids", "network", "disk_mib",
                                                          "exec_timeout_s", "typo"]), NUMBERS, max_size=4)),
        "budget": mostly(st.dictionaries(st.sampled_from(["max_turns", "step_wall_s", "max_format_errors",
                                                          "model_wait_s"]), NUMBERS, max_size=3)),
        "notify": mostly(st.dictionaries(st.sampled_from(["channel", "target"]), st.text(max_size=4), max_size=2)),
        "unknown": VALUES,
    },
)

ENGINES = st.sampled_from(["vllm", "ollama", "llamacpp", "sglang", "tgi"])
MODEL_ENTRY = st.fixed_dictionaries(
    {"engine": mostly(ENGINES), "model": mostly(st.text(max_size=8))},
    optional={key: NUMBERS for key in ("vram_mib", "params_b", "bytes_per_weight", "weights_mib", "layers",
                                       "kv_heads", "head_dim", "kv_bytes", "context", "parallel", "overhead_mib",
                                       "max_concurrent", "gpu_memory_utilization", "gpus", "threads", "port")}
    | {"cpu_only": mostly(st.booleans()), "served_name": mostly(st.text(max_size=4)),
       "extra_args": mostly(st.lists(st.text(max_size=4), max_size=2)),
       "env": mostly(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
       "contxt": VALUES},
)
CATALOGUE = st.fixed_dictionaries(
    {"models": mostly(st.dictionaries(st.text(max_size=6), MODEL_ENTRY, max_size=3))},
    optional={"model_cache": mostly(st.text(max_size=6)), "extra": VALUES},
)


@FUZZ
@given(value=HEARTH_TOML)
def test_hearth_toml_shaped_input_gives_a_config_or_config_error(value: dict[str, Any]) -> None:
    text = toml_text(value)
    if text is None:
        return
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert str(exc).startswith("hearth.toml: ")
        return
    assert config.base_priority <= config.max_priority
    assert config.clip_priority(None) == config.base_priority


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_hearth_toml_give_a_config_or_config_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "hearth.toml").write_bytes(data)
    try:
        load_config(tmp_path)
    except ConfigError as exc:
        assert "hearth.toml" in str(exc)


def test_a_hearth_toml_that_is_not_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "hearth.toml").mkdir()
    try:
        load_config(tmp_path)
    except ConfigError as exc:
        assert "hearth.toml" in str(exc)
    else:
        raise AssertionError("a directory named hearth.toml was accepted")


@FUZZ
@given(value=CATALOGUE)
def test_catalogue_shaped_input_gives_a_catalogue_or_catalogue_error(value: dict[str, Any]) -> None:
    try:
        catalogue = parse_catalogue(value)
    except CatalogueError as exc:
        assert str(exc).startswith("models.toml")
        return
    for entry in catalogue.models.values():  # what the scheduler computes from every entry
        assert isinstance(entry.vram(), int) and entry.vram() >= 0
        assert math.isfinite(entry.kv_cache_mib()) and entry.concurrency >= 1 and entry.served is not None


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_models_toml_give_a_catalogue_or_catalogue_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "models.toml").write_bytes(data)
    try:
        load_catalogue(tmp_path / "models.toml")
    except CatalogueError as exc:
        assert "models.toml" in str(exc)


def test_catalogue_numbers_that_overflow_the_vram_estimate_are_catalogue_errors() -> None:
    for extra in ({"params_b": 1e308}, {"params_b": math.inf}, {"bytes_per_weight": math.nan, "params_b": 1},
                  {"layers": 10**400, "kv_heads": 1, "head_dim": 1}):
        try:
            entry = parse_catalogue({"models": {"m": {"engine": "vllm", "model": "x", **extra}}}).models["m"]
        except CatalogueError as exc:
            assert "models.m" in str(exc)
        else:
            assert isinstance(entry.vram(), int), extra
