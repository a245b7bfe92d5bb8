"""arbor: a declarative pipeline for LLM pretraining studies (see README.md)."""

__version__ = "0.1.0"
