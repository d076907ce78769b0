"""`python -m streamer COMMAND`: the streamer's commands without the trainer's (no `training` import).

Same handlers as `seqcast serve|replay|tail|inspect`; tests and containers that ship
only the runtime dependencies use this entry point.
"""
from __future__ import annotations

import argparse
import sys

from streamer.cli import add_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer", description="seqcast's online commands.")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
