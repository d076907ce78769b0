"""Small trained bundles for the chaos scenarios, trained once per training-code change and cached.

The scenarios test delivery and state, not accuracy, so a tiny LSTM on the synthetic log is enough;
the soak needs L=50 so that its windows are as large as a real deployment's.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("training/**/*.py"), REPO / "streamer/features.py", REPO / "streamer/bundle.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_bundle(root: Path, window: int, say=print) -> Path:
    """A cached bundle (LSTM, items + 3-step forecast) with window `window`; trained on first use."""
    cache = root / f"L{window}-{_sources_digest()}"
    found = sorted(cache.glob("chaos/*/manifest.json"))
    if found:
        return found[-1].parent
    say(f"training a small L={window} bundle for the chaos suite (once per training-code change)")
    from training.data.synthetic import synthetic_log
    from training.pipeline import build_bundle

    return build_bundle(synthetic_log(users=60, items=50, events_per_user=30, seed=0), cache, "chaos", arch="lstm",
                        window=window, horizon=3, epochs=2, seed=0)
