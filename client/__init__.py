"""FastProxy: the client SDK and the shared core (policy model, envelope, keys)."""

__version__ = "0.1.0"
