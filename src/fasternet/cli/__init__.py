"""The ``fasternet`` command: a thin front end over the library API.

Every subcommand parses its flags, calls the library, and prints. User errors (a bad
checkpoint, an unknown model, a wrong flag value) end with one ``fasternet: error:`` line and
exit status 1, never a traceback. Command groups: :mod:`.models` (list, profile, info, convert,
download), :mod:`.training` (train, prepare), :mod:`.inference` (eval, predict, export,
quantize, bench), :mod:`.detection` (detect, convert-mmdet).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fasternet.cli import detection, inference, models, training

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasternet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (models, training, inference, detection):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        status = args.func(args)
    except (ValueError, OSError, RuntimeError, ImportError) as e:  # CheckpointError is a ValueError
        if args.verbose:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"fasternet: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fasternet: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
