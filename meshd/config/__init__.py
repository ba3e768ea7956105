"""meshd configuration: TOML parsed with tomllib into frozen dataclasses.

Every error names the file and the key path (`meshd.toml: group[0].advbase_ms:
expected an integer from 10 to 60000, found "fast"`).  All errors of a file are
collected before refusing it, so an administrator fixes them in one pass.

The package is one room per part of the file: `reader` (the typed TOML
walker every section uses), `load` (the whole file: `Config`, `ConfigError`,
`load_config`), and one module per section.  This module only re-exports
what callers use, so `from meshd.config import Config` does not depend on
where a name lives.

Nothing in the package touches the system except reading the file and the
secret files it names, which `--check` must verify too; it imports nothing
from meshd above it (only the value types of `meshd.health.checkspec`).
"""

from .load import (
                   ALL_GROUPS,
                   CONTROL_SOCKET_NAME,
                   DEFAULT_MCAST_V4,
                   DEFAULT_MCAST_V6,
                   DEFAULT_PORT,
                   DEFAULT_RUN_DIR,
                   MIN_SECRET_BYTES,
                   ClusterConfig,
                   Config,
                   ConfigError,
                   GroupConfig,
                   HealthConfig,
                   KeyConfig,
                   NodeConfig,
                   SyncConfig,
                   TrackInterfaceConfig,
                   TrackScriptConfig,
                   load_config,
                   parse_config,
                   parse_control_socket,
                   read_toml,
)

__all__ = [
    "ALL_GROUPS", "CONTROL_SOCKET_NAME", "DEFAULT_MCAST_V4", "DEFAULT_MCAST_V6", "DEFAULT_PORT",
    "DEFAULT_RUN_DIR", "MIN_SECRET_BYTES", "ClusterConfig", "Config", "ConfigError", "GroupConfig",
    "HealthConfig", "KeyConfig", "NodeConfig", "SyncConfig", "TrackInterfaceConfig",
    "TrackScriptConfig", "load_config", "parse_config", "parse_control_socket", "read_toml",
]
