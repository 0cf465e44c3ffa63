"""`python -m indexgrad` runs the command line."""

from .cli import entry

entry()
