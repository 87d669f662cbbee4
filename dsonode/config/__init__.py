"""Node configuration: a typed, frozen model loaded from TOML with DSONODE_<SECTION>_<KEY>
environment overrides (see `loader`), and the `dsonode init` / `dsonode config` commands."""

from dsonode.config.loader import (
    Config,
    ConfigError,
    config_from_mapping,
    load_config,
    render_template,
)
from dsonode.config.paths import CONFIG_FILE_NAME
from dsonode.config.settings import SPEC

__all__ = [
    "CONFIG_FILE_NAME",
    "SPEC",
    "Config",
    "ConfigError",
    "config_from_mapping",
    "load_config",
    "render_template",
]
