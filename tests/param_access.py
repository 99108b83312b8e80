"""Which `params.yaml` keys a stage reads: a recording proxy around the loaded `Params`.

DVC reruns a stage only when a key under its `params:` in dvc.yaml changes, so a key the code
reads but dvc.yaml does not declare leaves stale outputs. The proxy records every key read, as
the dotted path of params.yaml (`models.convnext_full.training.epochs`), to compare with what
dvc.yaml declares.

`python -m param_access OUT MODULE [ARGS...]` runs a stage module as `python -m MODULE ARGS`
would, with `rarespecies.config.params.load_params` returning the proxy, and writes the keys
read to OUT (a JSON list). A fresh process per stage, as under `dvc repro`: no TensorFlow
state shared.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

OWN_MODULE = "rarespecies.config.params"  # methods and properties defined here run on the proxy


def join(path: str, key: object) -> str:
    """The dotted params.yaml path of `key` under `path`."""
    return f"{path}.{key}" if path else str(key)


def record(value: Any, reads: set[str], path: str = "") -> Any:
    """`value` (a model, a dict or a leaf at `path`), recording into `reads` what is read.

    Leaves are returned as they are and their path recorded; models and dicts come back
    wrapped, and record nothing until something is read from them.
    """
    if isinstance(value, BaseModel):
        return ModelProxy(value, reads, path)
    if isinstance(value, dict):
        return DictProxy(value, reads, path)
    reads.add(path)
    return value


class _Proxy:
    """What both proxies share: the wrapped value, its path, where reads go."""

    __slots__ = ("_path", "_reads", "_target")

    def __init__(self, target: Any, reads: set[str], path: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_path", path)

    def _whole(self) -> Any:
        """The real value, recorded as read entirely (comparison, printing, dumping...)."""
        self._reads.add(self._path)
        return self._target

    @property  # isinstance() and pattern matching see the wrapped class
    def __class__(self) -> type:  # type: ignore[override]
        return type(self._target)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._path or 'params'} is read-only")

    def __eq__(self, other: object) -> bool:
        return self._whole() == (other._whole() if isinstance(other, _Proxy) else other)

    def __hash__(self) -> int:
        return hash(self._whole())

    def __repr__(self) -> str:
        return repr(self._whole())

    def __bool__(self) -> bool:
        return bool(self._whole())

    def __iter__(self) -> Iterator:
        return iter(self._whole())


class ModelProxy(_Proxy):
    """A pydantic model: fields record their path; `rarespecies.config.params` methods run on
    the proxy."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True  # a model is always true: nothing read

    def __getattr__(self, name: str) -> Any:
        cls = type(self._target)
        if field := cls.model_fields.get(name):
            return record(getattr(self._target, name), self._reads,
                          join(self._path, field.alias or name))
        for klass in cls.__mro__:
            if name in vars(klass):
                attr = vars(klass)[name]
                if klass.__module__ == OWN_MODULE and isinstance(attr, property):
                    return attr.fget(self)
                if klass.__module__ == OWN_MODULE and isinstance(attr, types.FunctionType):
                    return types.MethodType(attr, self)
                break
        if name in ("model_dump", "model_dump_json"):
            return self._dumper(getattr(self._target, name))
        return getattr(self._whole(), name)  # another pydantic built-in: reads everything

    def _dumper(self, dump: Callable[..., Any]) -> Callable[..., Any]:
        """`dump`, recording the fields it returns (`include` and `exclude` honoured)."""

        def dumped(*args: Any, include: Any = None, exclude: Any = None, **kwargs: Any) -> Any:
            fields = type(self._target).model_fields
            names = set(fields) if include is None else set(fields) & set(include)
            if isinstance(exclude, set | frozenset | list | tuple):
                names -= set(exclude)
            elif isinstance(exclude, dict):  # a nested exclusion still reads the field
                names -= {name for name, part in exclude.items() if part is True}
            for name in names:
                self._reads.add(join(self._path, fields[name].alias or name))
            return dump(*args, include=include, exclude=exclude, **kwargs)

        return dumped


class DictProxy(_Proxy):
    """A section keyed by name (`backbones`, `models`): looking a name up reads nothing yet;
    listing the names (iteration, `in`, `len`) reads the whole section."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self._target:
            self._whole()
        return record(self._target[key], self._reads, join(self._path, key))

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._target:
            return self[key]
        self._whole()  # a miss depends on the names listed
        return default

    def __contains__(self, key: object) -> bool:
        return key in self._whole()

    def __len__(self) -> int:
        return len(self._whole())

    def keys(self) -> Iterable[str]:
        return self._whole().keys()

    def values(self) -> list[Any]:
        return [self[key] for key in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(key, self[key]) for key in self.keys()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._whole(), name)


def covered(key: str, declared: Iterable[str]) -> bool:
    """Whether `key` is declared, itself or under a declared key (on a dot boundary); ''
    is the whole file."""
    return any(key == d or key.startswith(f"{d}.") or not d for d in declared)


def undeclared(reads: Iterable[str], declared: Iterable[str]) -> list[str]:
    """The keys read that no declared key covers, sorted ('' is the whole file)."""
    declared = list(declared)
    return sorted(key for key in set(reads) if not covered(key, declared))


def unread(reads: Iterable[str], declared: Iterable[str]) -> list[str]:
    """Declared keys nothing read touches (neither the key, nor under it, nor above it)."""
    reads = set(reads)
    return sorted(d for d in declared
                  if not any(covered(r, [d]) or covered(d, [r]) for r in reads))


def main() -> None:
    """Run `python -m MODULE ARGS` recording its params reads; write them to OUT as JSON."""
    out, module, *args = sys.argv[1:]
    import rarespecies.config.params

    reads: set[str] = set()
    load = rarespecies.config.params.load_params
    # The stage module is imported after this, so its `load_params` is the recording one.
    rarespecies.config.params.load_params = lambda *a, **k: record(load(*a, **k), reads)
    os.environ["RARESPECIES_DEBUG"] = "1"  # a failure raises with its traceback, no exit(1)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(out).write_text(json.dumps(sorted(reads)))


if __name__ == "__main__":
    main()
