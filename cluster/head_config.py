"""The head's configuration file (``head.toml``): where the head listens, its task slots, and the
cluster-wide scheduling policy.

Project policy lives in each project's ``hearth.toml``; what is the cluster's own (aging,
pre-emption patience, the resume bonus) lives here, on the head, because one scheduler serves every
project. Every key is checked: an unknown key is an error that names it and the file. Command-line
flags (``hearth up --host … --slots …``) override the file. The file is read from ``--config PATH``
or else ``<state dir>/head.toml``; a head without one runs the defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.config import ConfigError, parse_toml_config
from cluster.scheduling.types import PolicyConfig

HEAD_CONFIG_FILE = "head.toml"


class HeadListenConfig(BaseModel):
    """``[head]``: where the head listens and what it runs itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Address Ray and the sidecar listen on, and that boxes use to reach the head. 127.0.0.1 keeps
    a one-box cluster to itself; give the head's LAN address when other boxes join."""
    ray_port: int | None = Field(default=None, ge=1, le=65535)
    """Ray's GCS port, the one `hearth node start --address HEAD:PORT` joins (unset: 6379 for
    `hearth node start --head`, a free port for `hearth up`)."""
    api_port: int = Field(default=8765, ge=1, le=65535)
    """The sidecar's HTTP port (REST API, web page, event streams)."""
    slots: int | None = Field(default=None, ge=0)
    """Tasks the head runs itself; 0 makes it a pure head (scheduler and sidecar only). Unset: one
    per CPU."""


class HeadConfig(BaseModel):
    """The whole ``head.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head: HeadListenConfig = HeadListenConfig()
    """``[head]``: listening address, ports and the head's own task slots."""
    scheduler: PolicyConfig = PolicyConfig()
    """``[scheduler]``: cluster-wide policy (aging, pre-emption patience, resume bonus)."""


def parse_head_config(text: str, source: str = HEAD_CONFIG_FILE) -> HeadConfig:
    return parse_toml_config(text, HeadConfig, source)


def load_head_config(path: Path | None, state_dir: Path) -> HeadConfig:
    """``path`` (which must exist), else ``<state_dir>/head.toml`` if present, else the defaults."""
    if path is None:
        path = state_dir / HEAD_CONFIG_FILE
        if not path.exists():
            return HeadConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the head configuration: {exc.strerror}") from None
    return parse_head_config(text, str(path))
