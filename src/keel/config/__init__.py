"""Config helpers that must stay light: no torch, Lightning or data imports here."""

from keel.config.entry import exit_now, run_app
from keel.config.resolvers import register_resolvers
from keel.config.validate import ConfigError, validate_config, validate_export_config

__all__ = ["ConfigError", "exit_now", "register_resolvers", "run_app", "validate_config", "validate_export_config"]
