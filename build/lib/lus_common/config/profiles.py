"""Profiles and parameter resolution shared by every study notebook.

A notebook's tagged cell holds plain literals; ``None`` means "take it from the profile". The
next cell calls :func:`resolve_params`, so a papermill ``-p epochs 3`` overrides one value and
keeps the rest of the profile.
"""

from __future__ import annotations

from lus_common.config.registry import lookup

PROFILE_NAMES = ("smoke", "quick", "paper")


def resolve_params(profiles: dict[str, dict], profile: str, **given) -> dict:
    """Merge a profile with the values given in a notebook's parameters cell.

    Args:
        profiles: ``{"smoke": {...}, "quick": {...}, "paper": {...}}`` of one study.
        profile: the chosen profile name.
        **given: the notebook's parameters; ``None`` takes the profile's value.

    Returns:
        The full parameter dict, ``profile`` included.

    Raises:
        ValueError: unknown profile, or a parameter the study does not know.
    """
    base = dict(lookup(profiles, profile, "profile", error=ValueError))
    unknown = sorted(set(given) - set(base) - {"device"})
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown}. Known: {sorted(set(base) | {'device'})}")
    for key, value in given.items():
        if value is not None:
            base[key] = value
    base["profile"] = profile
    return base
