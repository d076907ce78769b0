"""The `seqcast` command: one entry point, two halves.

Offline commands (train, evaluate, benchmark, seed-example) live in `training.cli`;
online commands (serve, replay, tail, inspect, models) in `streamer.cli`; the
demo, which drives both halves, in `training.demo` (registered by `training.cli`).
Each module registers its own sub-commands, and heavy imports (TensorFlow,
onnxruntime, Kafka) happen only inside the handler that needs them, so
`seqcast --help` is instant and `seqcast serve` never loads TensorFlow.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from streamer import cli as streamer_cli
    from training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="seqcast",
        description="Streaming real-time forecaster and recommender. "
        "Train LSTM/Transformer models offline, serve them per event from Kafka.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    training_cli.add_commands(commands)
    streamer_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
