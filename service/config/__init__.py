"""Configuration: one typed, validated Settings object built from the environment."""

from service.config.reader import SettingsError
from service.config.settings import DEFAULT_METRICS_PORT, DEFAULT_PORT, Settings, settings_or_exit

__all__ = ["DEFAULT_METRICS_PORT", "DEFAULT_PORT", "Settings", "SettingsError", "settings_or_exit"]
