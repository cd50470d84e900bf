"""Find a Job from a CLI target: ``path/to/file.py:job`` or ``package.module:job``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from eddies.errors import ConfigError
from eddies.runtime.graph import Job

__all__ = ["load_job"]


def load_job(target: str) -> Job:
    """Import ``target`` and return its Job (an attribute, or a function that returns one).

    >>> load_job("math:pi")
    Traceback (most recent call last):
    ...
    eddies.errors.ConfigError: math:pi is 3.14159..., not an eddies.Job ...
    """
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ConfigError(
            f"job target {target!r} must look like path/to/file.py:job or package.module:job"
        )
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).resolve()
        if not path.exists():
            raise ConfigError(f"job file {module_part} does not exist")
        name = f"_eddies_job_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {module_part}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {module_part!r}: {exc}") from exc
    try:
        obj: Any = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{module_part} has no attribute {attr!r}") from exc
    if callable(obj) and not isinstance(obj, Job):
        obj = obj()
    if not isinstance(obj, Job):
        raise ConfigError(f"{target} is {obj!r}, not an eddies.Job (or a function returning one)")
    return obj
