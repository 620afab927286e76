"""The package version (its own module, so that npk's modules can read it without importing npk)."""
__version__ = "0.1.0"
