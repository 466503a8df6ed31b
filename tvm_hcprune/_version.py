"""Package version (one place; the wheel's version is in pyproject.toml)."""

__version__ = "0.1.0"
