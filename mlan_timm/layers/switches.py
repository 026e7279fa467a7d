"""On/off switches: from environment variables (read at import) and from Python arguments.

Anything that is not a switch value is said, not guessed: a string such as ``"false"`` passed where a bool is
expected would otherwise count as on, and ``MLAN_TIMM_CPU_KERNELS=maybe`` silently as off.
"""
import os
import warnings
from typing import Optional

__all__ = ["ON_VALUES", "OFF_VALUES", "switched_on", "env_switch", "check_switch"]

#: Environment values (any case, surrounding spaces ignored) that switch something on, and off.
ON_VALUES = ("1", "true", "yes", "on")
OFF_VALUES = ("", "0", "false", "no", "off")


def switched_on(value: Optional[str]) -> Optional[bool]:
    """True / False for an on / off environment value (None counts as unset: off); None for anything else."""
    v = (value or "").strip().lower()
    return True if v in ON_VALUES else False if v in OFF_VALUES else None


def env_switch(var: str) -> bool:
    """Whether environment variable ``var`` switches on; a value that is neither on nor off warns, naming the
    variable, and counts as off (an import must not fail over it)."""
    value = os.environ.get(var)
    on = switched_on(value)
    if on is None:
        warnings.warn(f"{var}={value!r} is not an on/off value ({'/'.join(ON_VALUES)} or "
                      f"{'/'.join(v for v in OFF_VALUES if v)}); treating it as off", RuntimeWarning, stacklevel=2)
        return False
    return on


def check_switch(value, name: str, allow_none: bool = False) -> Optional[bool]:
    """``value`` if it is a bool (or None where ``allow_none``); TypeError naming ``name`` otherwise."""
    if isinstance(value, bool) or (value is None and allow_none):
        return value
    raise TypeError(f"{name} must be True or False{' or None' if allow_none else ''}, got {value!r}")
