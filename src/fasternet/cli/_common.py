"""What every command group shares: adding a subcommand, list flags, checked numbers."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

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


def positive_int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers >= 1."""
    values = tuple(positive_int(part) for part in split(text))
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def comma_list(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list."""
    return tuple(split(text))


def from_args(args: argparse.Namespace, cls: type, **given: Any) -> Any:
    """An instance of the dataclass ``cls`` from the flags named like its fields (``given`` wins)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**{**values, **given})
