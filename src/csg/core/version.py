"""The package version (one place; ``csg.__version__`` re-exports it)."""
__version__ = "0.2.0"
