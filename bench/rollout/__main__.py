"""`python -m bench.rollout`: options, models, both scenarios per configuration, the report.

Also the entry of the training subprocess: `python -m bench.rollout _train MODELS_DIR RECIPE_JSON`.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str]) -> int:
    if argv[:1] == ["_train"]:
        from bench.rollout.models import train_main

        return train_main(argv[1:])
    from bench.rollout.run import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
