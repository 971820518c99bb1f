"""What every command group shares: adding a subcommand, list flags, reporting unreadable files."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable

from fasternet.io.images import Unreadable

logger = logging.getLogger("fasternet")

Command = Callable[[argparse.Namespace], int | None]


def add_command(sub: argparse._SubParsersAction, name: str, func: Command, help: str) -> argparse.ArgumentParser:
    """A subcommand whose help shows every default."""
    parser = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def split(text: str) -> list[str]:
    """A comma-separated flag value as a list (empty items dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear error for 0, negatives and words)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def report_unreadable(items: Iterable[Unreadable]) -> int:
    """One line per unreadable file on stderr (path and reason); returns how many."""
    count = 0
    for item in items:
        logger.warning("skipped unreadable image %s", item)
        count += 1
    return count
