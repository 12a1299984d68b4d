"""The configuration: declared once in `model`, read from file + environment + flags by `sources`,
exported as JSON Schema and documentation tables by `schema`.

Public names (kept stable for the modules that read the config): Config, Provider, Cors, Jwks, Limits,
Decision, ConfigError, load, ASYMMETRIC_ALGS, HEADER_NAME, strings, rule_to_file.
"""

from sidecar.config.errors import ConfigError
from sidecar.config.model import (
    FOREIGN_IDENTITY_HEADERS,
    METHOD_OVERRIDE_HEADERS,
    Config,
    Cors,
    Decision,
    Jwks,
    Limits,
    Provider,
    load,
    rule_to_file,
)
from sidecar.config.types import ASYMMETRIC_ALGS, HEADER_NAME, Cli, Hint, key, strings

__all__ = [
    "ASYMMETRIC_ALGS",
    "FOREIGN_IDENTITY_HEADERS",
    "HEADER_NAME",
    "METHOD_OVERRIDE_HEADERS",
    "Cli",
    "Config",
    "ConfigError",
    "Cors",
    "Decision",
    "Hint",
    "Jwks",
    "Limits",
    "Provider",
    "key",
    "load",
    "rule_to_file",
    "strings",
]
