"""Config helpers that must stay light: no torch, Lightning or data imports here."""

from keel.config.resolvers import register_resolvers
from keel.config.validate import ConfigError, validate_config

__all__ = ["ConfigError", "register_resolvers", "validate_config"]
