"""Reader tools on the command line: graph and cost (registered into the `indexgrad` parser)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the reader-tool subcommands."""
    return None
