"""The event-file flags that `seqcast train`, `evaluate` and `demo` share, and the loader they select.

One place, so that every command reads the same formats the same way (`training.data.loaders`).
"""
from __future__ import annotations

import argparse

DATA_HELP = ("event data: 'synthetic[:users=500,items=200,events=40,seed=0]', a MovieLens ratings.dat / "
             "u.data, an ETT csv(.gz), a daily OHLCV stock csv, an S3Rec sequence file, or a CSV/Parquet/"
             "JSON-lines file with --user/--ts/--item/--value column names")


def add_data_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True) -> None:
    parser.add_argument("--data", required=required, metavar="FILE", help=DATA_HELP)
    parser.add_argument("--user", help="user/entity column (generic tables)")
    parser.add_argument("--ts", help="timestamp column (generic tables)")
    parser.add_argument("--item", help="item column (generic tables)")
    parser.add_argument("--value", help="value column (generic tables)")
    parser.add_argument("--ts-unit", choices=["s", "ms", "iso"], default="s",
                        help="how the --ts column is written: epoch seconds, epoch milliseconds, ISO-8601")


def load_data(args: argparse.Namespace):
    """The EventLog of --data: a generic table when --user/--ts name its columns, else by content."""
    from training.data.loaders import load_any, load_table

    if args.user or args.ts:
        return load_table(args.data, user=args.user, ts=args.ts, item=args.item, value=args.value,
                          ts_unit=args.ts_unit)
    return load_any(args.data)
