"""Typed doors to the few mlx / mlx-lm calls whose annotations are wider than the way we call them
(job process only; mlx is imported inside the functions).

mlx's stubs annotate results for every way a function can be called: ``tree_flatten`` returns a list
*or* a dict (a dict only when a dict ``destination`` is passed), ``mx.load`` an array, a dict or a
``(dict, metadata)`` pair (by file format and ``return_metadata``), ``array.item()`` a possibly complex
scalar, and ``mlx_lm.utils.load`` a 2- or 3-tuple (by ``return_config``). Each helper here makes one
of those calls in the one way the jobs use it and returns that narrower type, checked where a check
is cheap, so that the callers type-check without ``cast`` or ``# type: ignore`` of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import mlx.core as mx


def flat_tree(tree: Any) -> list[tuple[str, Any]]:
    """``mlx.utils.tree_flatten(tree)``: ``[(dotted path, leaf), ...]`` in tree order (leaves are
    usually ``mx.array``; ``dict(flat_tree(t))`` is the form ``mx.save_safetensors`` takes)."""
    from mlx.utils import tree_flatten

    # without a `destination`, tree_flatten always builds and returns a new list
    return cast(list[tuple[str, Any]], tree_flatten(tree))


def parameter_count(tree: Any) -> int:
    """Number of scalar values in a parameter tree (sum of ``array.size`` over its leaves); quantized
    weights count as their packed storage, as ``tree_flatten`` sees them."""
    return sum(int(value.size) for _, value in flat_tree(tree))


def load_arrays(path: Path) -> dict[str, mx.array]:
    """The ``{name: array}`` of a ``.safetensors`` file (``mx.load``, lazily read until evaluated).

    Raises:
        ValueError: the file held something other than a name -> array mapping (not a safetensors file).
        OSError and mlx's own errors for a missing or unreadable file, as ``mx.load`` raises them.
    """
    import mlx.core as mx

    loaded = mx.load(str(path))
    if not isinstance(loaded, dict):  # a .npy file gives one array; a safetensors file always a dict
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not named arrays")
    return loaded


def real_item(value: mx.array) -> int | float:
    """The Python number of a one-element real array (``int`` for integer and bool dtypes, else ``float``).

    Raises:
        TypeError: the array is complex (mlx's ``item()`` then returns a ``complex``).
    """
    item = value.item()
    if isinstance(item, complex):
        raise TypeError(f"expected a real scalar, got the complex {item!r}")
    return item


def load_with_config(path: str, adapter_path: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``mlx_lm.utils.load(path, adapter_path=..., return_config=True)``: ``(model, tokenizer, config)``.

    Raises whatever ``mlx_lm.utils.load`` raises (a missing directory, unreadable weights, ...).
    """
    from mlx_lm.utils import load

    # return_config=True always gives the 3-tuple; mlx-lm annotates both forms in one Union
    return cast(tuple[Any, Any, dict[str, Any]], load(path, adapter_path=adapter_path, return_config=True))
