"""meshd configuration: TOML parsed with tomllib into frozen dataclasses.

Every error names the file and the key path (`meshd.toml: group[0].advbase_ms:
expected an integer from 10 to 60000, found "fast"`).  All errors of a file are
collected before refusing it, so an administrator fixes them in one pass.

The package is one room per part of the file:

* `reader`: the typed TOML walker every section uses;
* `load`: the whole file (`Config`, `ConfigError`, `load_config`, `parse_config`);
* one module per section: `node`, `cluster` (and the secret files), `groups`,
  `tracks`, `sync`, `health` with its `health_check` sub-table, `metrics`.

This module only re-exports what callers use, so `from meshd.config import
Config` does not depend on where a name lives.  Section internals (key sets,
the per-section `parse_*`) are imported from their module.

Must not: touch the system beyond reading the file, the secret files it names
(which `--check` must verify too), the hostname (the default node name) and
the user and group databases (`[node] script_user`, which `--check` must
verify too); accept half a file; or import anything from meshd but the value
types of `meshd.health.checkspec` and `meshd.runas`, on the floor below
(tests/test_layers.py).
"""

from .cluster import (
    DEFAULT_MCAST_V4,
    DEFAULT_MCAST_V6,
    DEFAULT_PORT,
    MIN_SECRET_BYTES,
    ClusterConfig,
    KeyConfig,
)
from .groups import ALL_GROUPS, GroupConfig
from .health import HealthConfig
from .load import Config, ConfigError, load_config, parse_config, read_toml
from .metrics import DEFAULT_METRICS_PORT, MetricsConfig
from .node import CONTROL_SOCKET_NAME, DEFAULT_RUN_DIR, NodeConfig, parse_control_socket
from .sync import SyncConfig
from .tracks import TrackInterfaceConfig, TrackScriptConfig

__all__ = [
    "ALL_GROUPS", "CONTROL_SOCKET_NAME", "DEFAULT_MCAST_V4", "DEFAULT_METRICS_PORT", "DEFAULT_MCAST_V6",
    "DEFAULT_PORT", "DEFAULT_RUN_DIR", "MIN_SECRET_BYTES", "ClusterConfig", "Config", "ConfigError",
    "GroupConfig", "HealthConfig", "KeyConfig", "MetricsConfig", "NodeConfig", "SyncConfig",
    "TrackInterfaceConfig",
    "TrackScriptConfig", "load_config", "parse_config", "parse_control_socket", "read_toml",
]
