"""How a transformers model call takes and returns its KV cache, on either side of a rename.

transformers 5.2x renamed the argument and output field `past_key_values` to `cache` (the old argument is
accepted with a warning until 5.40; the output has the new field only). This package pins the new name, but a
GPU machine runs this checkout on the transformers it has (bench/gpu_check.py, e.g. 5.17), so every call that
passes or reads a cache goes through these two helpers.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast

#: The name of the cache argument and output field in the installed transformers.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def with_cache(cache: Any, use_cache: bool) -> dict[str, Any]:
    """Keyword arguments for a model call: the cache under the installed version's name, and `use_cache`."""
    return {CACHE_FIELD: cache, "use_cache": use_cache}


def returned_cache(output: Any) -> Any:
    """The cache a model call returned (None without `use_cache`)."""
    return getattr(output, CACHE_FIELD, None)
