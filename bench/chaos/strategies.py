"""hypothesis strategies for messages on the events topic that try every way of being wrong.

`poison_messages()` mixes three families:
- event-shaped JSON objects whose every field may take any JSON type, an out-of-range number
  (huge integers, NaN/Infinity spelled out, subnormals), a lone surrogate, an id at or over the
  128-character limit, an ISO time far outside what epoch seconds hold, or be missing;
- arbitrary JSON values (nested lists and objects, any scalars);
- arbitrary bytes (invalid UTF-8, truncated JSON, control characters).
Most are invalid, some are valid by accident; the checker decides by the contract, and counts.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

from hypothesis import strategies as st

LIMIT = 128
ID_LENGTHS = st.sampled_from([0, 1, 2, LIMIT - 1, LIMIT, LIMIT + 1, 500])
SURROGATE = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])


@st.composite
def ids(draw) -> object:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(min_size=0, max_size=3))
    if kind == 1:  # exactly at and around the length limit
        return "i" * draw(ID_LENGTHS)
    if kind == 2:  # a lone surrogate somewhere
        text = draw(st.text(max_size=10))
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(SURROGATE) + text[at:]
    if kind == 3:
        return draw(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20))
    return draw(scalars)


numbers = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6),
    st.integers(min_value=10**300, max_value=10**450).map(lambda n: n * (-1) ** (n % 2)),  # beyond float64
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 1.5e308, 0.0, -0.0]),
)
times = st.one_of(
    numbers,
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-13-01", "yesterday",
                     "2026-01-01T00:00:00Z", "2026-01-01 12:00", ""]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                           max_leaves=12)
_MISSING = object()


@st.composite
def event_objects(draw) -> dict:
    fields = {"event_id": ids(), "user_id": ids(), "ts": times, "item_id": st.one_of(ids(), st.none()),
              "value": st.one_of(numbers, st.none(), scalars), "type": st.one_of(st.none(), ids())}
    out = {}
    for name, strategy in fields.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # the field is missing
        out[name] = draw(st.one_of(strategy, json_values) if draw(st.booleans()) else strategy)
    return out


def _dumps(obj) -> bytes:
    """JSON as a producer in another language might write it: NaN/Infinity spelled out, surrogates escaped."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=True).encode()


def poison_messages() -> st.SearchStrategy:
    return st.one_of(
        event_objects().map(_dumps),
        event_objects().map(_dumps),
        json_values.map(_dumps),
        st.binary(max_size=200),
        st.none(),
    )


@contextmanager
def constants_of(*modules):
    """Generate with the literal constants of `modules` only.

    hypothesis mixes constants found in every *local* module already imported (limits such as 128
    or 65536 are exactly what a fuzzer should try), so what it draws for a seed depended on what
    the process happened to import before. Pinning the modules makes a corpus a function of its
    seed and the code. Relies on hypothesis internals; the version is pinned in pyproject.toml.
    """
    from hypothesis.internal.conjecture import providers
    from hypothesis.internal.constants_ast import Constants, constants_from_module
    from hypothesis.internal.floats import float_to_int
    from sortedcontainers import SortedSet

    fixed = Constants(integers=SortedSet(), floats=SortedSet(key=float_to_int), bytes=SortedSet(),
                      strings=SortedSet())
    for module in modules:
        fixed |= constants_from_module(module)
    original = providers._get_local_constants
    providers._get_local_constants = lambda: fixed
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = original
        providers.CONSTANTS_CACHE.cache.clear()
