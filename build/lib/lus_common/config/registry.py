"""One way to look a name up: every registry of the package (studies, models, strategies, weights,
datasets, profiles, norms, ...) answers an unknown name with the same message, listing the
options."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def plural(kind: str) -> str:
    """'study' -> 'studies', 'model' -> 'models', 'diagnosis' -> 'diagnoses', 'weights' ->
    'weights'."""
    if kind.endswith("is"):
        return kind[:-2] + "es"
    if kind.endswith("s"):
        return kind
    if kind.endswith("y") and kind[-2:-1] not in "aeiou":
        return kind[:-1] + "ies"
    return kind + "s"


def lookup(options: Mapping | Iterable, name, kind: str, error: type[Exception] = KeyError):
    """``options[name]`` for a mapping, ``name`` itself for a sequence of allowed values.

    Args:
        options: a registry (mapping) or the allowed values.
        name: what the user asked for.
        kind: what a name is, in the singular ("study", "strategy", "norm").
        error: ``KeyError`` for registries, ``ValueError`` for a parameter's value.

    Raises:
        error: ``Unknown <kind> '<name>'. Known <kinds>: [...]``.
    """
    known = options if isinstance(options, Mapping) else tuple(options)
    try:
        if name in known:
            return known[name] if isinstance(known, Mapping) else name
    except TypeError:  # an unhashable value (a list given for a name)
        pass
    raise error(f"Unknown {kind} '{name}'. Known {plural(kind)}: {list(known)}")
