"""Which `params.yaml` keys a stage reads: a recording proxy around the loaded `Params`.

DVC reruns a stage only when a key under its `params:` in dvc.yaml changes, so a key the code
reads but dvc.yaml does not declare leaves stale outputs. The proxy records every key read, as
the dotted path of params.yaml (`models.convnext_full.training.epochs`), to compare with what
dvc.yaml declares.

`install(folder)` makes `rarespecies.config.params.load_params` return the proxy in this
process, as soon as that module is imported, and writes the keys read to
`folder/<stage>.json` when the process ends. `tests/recording/sitecustomize.py` calls it in
every Python process of a `dvc repro` run with RARESPECIES_PARAM_READS set: the stages run
exactly as DVC runs them, and are recorded on the way.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.util
import json
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


def stage_name(argv: list[str]) -> str | None:
    """`python -m stages.train convnext_full` -> `train@convnext_full`; None for other
    programs."""
    if "-m" not in argv[:-1] or not argv[argv.index("-m") + 1].startswith("stages."):
        return None
    module, *args = argv[argv.index("-m") + 1:]
    names = [a for a in args if not a.startswith("-")]
    return module.removeprefix("stages.") + "".join(f"@{name}" for name in names[:1])


class _RecordOnImport(importlib.abc.MetaPathFinder):
    """Wraps `load_params` right after the params module is executed."""

    def __init__(self, reads: set[str]) -> None:
        self.reads = reads

    def find_spec(self, name, path, target=None):
        if name != OWN_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        execute, reads = spec.loader.exec_module, self.reads

        def exec_module(module: types.ModuleType) -> None:
            execute(module)
            load = module.load_params
            module.load_params = lambda *a, **k: record(load(*a, **k), reads)

        spec.loader.exec_module = exec_module
        return spec


def install(folder: str | Path) -> None:
    """Record this process's params reads into `folder/<stage>.json`, if it is a stage."""
    name = stage_name(sys.orig_argv)
    if name is None:
        return
    reads: set[str] = set()
    sys.meta_path.insert(0, _RecordOnImport(reads))
    out = Path(folder) / f"{name}.json"
    atexit.register(lambda: out.write_text(json.dumps(sorted(reads))))
