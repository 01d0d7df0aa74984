"""wxpush's configuration: every `WXPUSH_*` environment variable, typed and read in one place.

The bottom layer: every package may import it and it imports none of ours
(docs/configuration.md lists the variables; docs/architecture.md the layers)."""

from config.settings import (
    ENV_PREFIX,
    ConfigurationError,
    Settings,
    env_var,
    overridden,
    prefect_api_url,
    reload,
    settings,
)

__all__ = [
    "ENV_PREFIX",
    "ConfigurationError",
    "Settings",
    "env_var",
    "overridden",
    "prefect_api_url",
    "reload",
    "settings",
]
