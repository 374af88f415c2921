"""bbt: Black-Box Tuning of soft prompts against a language model served as an API."""

from bbt._version import __version__

__all__ = ["__version__"]
