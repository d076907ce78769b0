"""Where the shared datasets live: `shared/data` beside the repository (never inside it).

Resolved from this file, not from /work, because CI clones the repository
elsewhere with `shared/` next to it.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
