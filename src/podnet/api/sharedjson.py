"""JSON decoding whose objects share their strings: what a process that keeps many decoded
objects (the API server's informers: every pod of the cluster) decodes with.

What belongs here: `loads`, a drop-in for `json.loads` on the objects podnet stores and
serves. Nothing here knows what an object means.

Why: `json.loads` makes a new string for every key and value of every object; a decoded pod
(2-4 KB of JSON) took 15 KB, most of it the same keys ("metadata", "lastTransitionTime", ...)
and the same values ("True", "Running", the namespace, the node's name) again in every pod. Here
each object's keys and string values go through a memo, so equal strings decoded at different
times are one object: the same pod takes about half (7.3 KB, tests/unit/api). It costs CPU:
each object's pairs go through Python (`object_pairs_hook`), about 2-3x `json.loads` (a 2.2 KB
pod: 45-51 against 17-22 us, 2026-12-06), so it is for what a process keeps (the informers'
objects), not for what one request decodes and drops (`registry.decode_transient`).

Invariants:
- The result equals `json.loads`'s for the same input (same types, same values; a repeated key
  keeps its last value). Strings are immutable, so sharing them is invisible to callers, who
  still get fresh dicts and lists they may change.
- The memo is bounded (`MEMO_LIMIT` strings): when full it is emptied and refills with what
  comes next, so values seen once (uids, timestamps) cannot grow it without bound; strings
  already shared stay shared.
- Strings inside lists are not memoised (rare in objects, and lists of them are short).
"""

from __future__ import annotations

import json
from typing import Any

MEMO_LIMIT = 1 << 16

_memo: dict[str, str] = {}


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    memo = _memo
    if len(memo) > MEMO_LIMIT:
        memo.clear()
    share = memo.setdefault
    return {share(k, k): (share(v, v) if type(v) is str else v) for k, v in pairs}


_decoder = json.JSONDecoder(object_pairs_hook=_object)


def share(text: str) -> str:
    """`text`, or the equal string already shared: for a string kept from an object decoded
    with `json.loads` (one a caller reads a few fields of and drops)."""
    memo = _memo
    if len(memo) > MEMO_LIMIT:
        memo.clear()
    return memo.setdefault(text, text)


def loads(data: bytes | str) -> Any:
    """`json.loads(data)`, with strings shared between the objects decoded (see above)."""
    text = data.decode() if isinstance(data, bytes | bytearray) else data
    return _decoder.decode(text)
