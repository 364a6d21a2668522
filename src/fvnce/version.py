"""The package version (a leaf: the modules that record it in their files import it from here)."""

__version__ = "0.3.0"
