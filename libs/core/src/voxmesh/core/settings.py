"""Settings from the environment.

Every service declares a frozen dataclass of its settings with documented
defaults; `from_env` fills it from `VOXMESH_<SERVICE>_<FIELD>` (upper case), so a
Helm value, a Makefile variable and a test fixture all set the same names.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _coerce(raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typ is int:
        return int(raw)
    if typ is float:
        return float(raw)
    if origin in (tuple, list) or typ in (tuple, list):
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        return items if origin is tuple or typ is tuple else list(items)
    return raw


def from_env(cls: type[T], prefix: str, environ: typing.Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from `environ` (default os.environ); explicit overrides win."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        key = f"{prefix}_{field.name}".upper()
        if key in env:
            try:
                values[field.name] = _coerce(env[key], hints[field.name])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    return cls(**values)
