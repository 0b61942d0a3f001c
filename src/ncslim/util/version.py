"""The version of ncslim (the same as pyproject.toml's); below every package, so that any may
record it."""

__version__ = "0.1.0"
