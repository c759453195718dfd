"""Docs that must stay true: every hearth.toml key is documented."""

from pathlib import Path

from agent.build import ArtifactsConfig, ImageConfig
from agent.config import BudgetConfig, NotifyConfig, ProjectConfig
from agent.finish import FinishConfig
from agent.sandbox.base import SandboxConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_reference_lists_every_key() -> None:
    text = (DOCS / "configuration.md").read_text()
    for prefix, model in (("", ProjectConfig), ("limits.", SandboxConfig), ("budget.", BudgetConfig),
                          ("notify.", NotifyConfig), ("artifacts.", ArtifactsConfig),
                          ("artifacts.image.", ImageConfig), ("finish.", FinishConfig)):
        for name in model.model_fields:
            if name not in {"limits", "budget", "notify", "artifacts", "finish"} and (prefix, name) != (
                    "artifacts.", "image"):
                assert f"`{prefix}{name}`" in text, f"docs/configuration.md lacks {prefix}{name}"


def test_head_config_reference_lists_every_key() -> None:
    from cluster.head_config import HeadListenConfig
    from cluster.scheduling.types import PolicyConfig

    text = (DOCS / "configuration.md").read_text()
    for prefix, model in (("head.", HeadListenConfig), ("scheduler.", PolicyConfig)):
        for name in model.model_fields:
            assert f"`{prefix}{name}`" in text, f"docs/configuration.md lacks {prefix}{name}"
