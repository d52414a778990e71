"""The toolkit's version, apart so any layer can stamp it without importing the package root."""

__version__ = "0.1.0"
