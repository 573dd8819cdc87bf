"""The package version (written into every bundle)."""

__version__ = "0.1.0"
