"""A run's identity: the canonical JSON of its config dict, and `run_key`, its hash.

The experiment specs (`gradreg.paper.experiments`), the result store and the records all
name a run by this key, so it lives in the library, below all three. Importing this module has
no side effects; it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "json_default", "run_key"]


def run_key(config: dict) -> str:
    """A stable id for a run: the first 32 hex digits of the SHA-256 of the config's canonical JSON.

    The canonical JSON has keys sorted at every level, separators `","` and `":"`, and is
    ASCII-only. The key is independent of dict key order; tuples hash like lists, NumPy/torch
    scalars like the Python number they hold. `1` and `1.0` are different configs.

    Args:
        config: The run's config dict.

    Returns:
        32 lower-case hex digits.

    Raises:
        TypeError: `config` is not a dict, or holds a value JSON cannot represent.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()[:32]


def canonical_json(obj: Any) -> str:
    """`obj` as JSON with keys sorted at every level, separators `","` and `":"`, ASCII-only.

    Args:
        obj: A JSON-able value (NumPy/torch scalars and arrays allowed, see `json_default`).

    Returns:
        The JSON text.

    Raises:
        TypeError: `obj` holds a value JSON cannot represent.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=json_default)


def json_default(obj: Any) -> Any:
    """`json.dumps`'s `default`: NumPy / torch scalars and arrays as Python numbers and lists.

    Args:
        obj: A value `json` cannot serialize itself.

    Returns:
        `obj.tolist()` or `obj.item()`.

    Raises:
        TypeError: `obj` has neither method.
    """
    # duck-typed, so that neither NumPy nor torch is imported here
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
