"""Which params a stage reads, measured: a view of `Params` that records every value read through it.

`recording(params)` returns a stand-in for the study whose attribute and item accesses behave as on the
real object but note the dotted key of every value read (`trunk.lr`, `decays.late.final_lr_ratio`). Our
own methods and properties (`Decay.decay_steps`, `Params.model_ids()`) run on the view, so what they read
is noted too; pydantic's API (`model_dump`, `model_copy`) marks the whole section as read (a
`model_dump(exclude=...)` all but the excluded fields) and returns plain data. Lists and mappings of plain
values are leaves (reading one reads it all). Mappings of sections (`sources`, `decays`, `merges`) are
views: taking an item reads nothing yet; iterating, `len` or `in` notes that the stage depends on which
items exist (`Reads.collections`), which the engines see through the stage's inputs, not its params.

`python -m workflow <stage>` runs under this view when `ARBOR_RECORD_READS=<dir>` is set and writes what
it read to `<dir>/<stage>@<key>.json`; tests/integration/test_invalidation.py holds that against the keys
each engine tracks and against what each engine re-runs after an edit.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

RECORD_ENV = "ARBOR_RECORD_READS"


class Hook:
    """What a view does with what is read through it (`view(params, hook)`); this one changes nothing."""

    def value(self, key: str, value: Any) -> Any:
        """A leaf value read at dotted `key`; returns what the reader gets."""
        return value

    def collection(self, key: str) -> None:
        """The set of items of mapping `key` was read (iteration, len, in)."""

    def presence(self, key: str) -> None:
        """Whether the optional section `key` is set was read (`if decay.rewarm:`)."""

    def missing(self, key: str, name: str) -> Any:
        """`mapping[name]` where the mapping has no such item."""
        raise KeyError(name)


@dataclass
class Reads(Hook):
    """Notes every read: the recorder."""
    keys: set[str] = field(default_factory=set)          # dotted keys of values read
    collections: set[str] = field(default_factory=set)   # mappings whose set of items was read
    present: set[str] = field(default_factory=set)       # optional sections whose presence was read

    def value(self, key: str, value: Any) -> Any:
        self.keys.add(key)
        return value

    def note(self, key: str) -> None:
        self.keys.add(key)

    def collection(self, key: str) -> None:
        self.collections.add(key)

    def presence(self, key: str) -> None:
        self.present.add(key)


def view(params: BaseModel, hook: Hook) -> Any:
    """`params` seen through `hook`."""
    return _Section(params, "", hook)


def recording(params: BaseModel, reads: Reads) -> Any:
    """A view of `params` that notes every read into `reads`."""
    return view(params, reads)


def unwrap(value: Any) -> Any:
    """The real object behind a view (or the value itself)."""
    return object.__getattribute__(value, "_obj") if isinstance(value, (_Section, _Sections)) else value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _holds_sections(annotation: Any) -> bool:
    """Whether a field is a mapping of name -> section (`dict[Name, Decay]`)."""
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) is dict and len(args) == 2 and isinstance(args[1], type) \
        and issubclass(args[1], BaseModel)


def _wrap(value: Any, key: str, reads: Reads, sections: bool = False) -> Any:
    if isinstance(value, BaseModel):
        return _Section(value, key, reads)
    if sections:
        return _Sections(value, key, reads)
    return reads.value(key, value)


def _bound_to_view(obj: Any, name: str) -> Any | None:
    """A property or method of our schema classes, looked up on the class (not on pydantic's BaseModel)."""
    for klass in type(obj).__mro__:
        if klass is BaseModel or klass is object:
            return None
        if name in vars(klass):
            return vars(klass)[name]
    return None


class _Section:
    """A pydantic section seen through the recorder."""

    __slots__ = ("_obj", "_key", "_reads")

    def __init__(self, obj: BaseModel, key: str, reads: Reads) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str) -> Any:
        obj, key, reads = self._obj, self._key, self._reads
        fields = type(obj).model_fields
        if name in fields:
            return _wrap(getattr(obj, name), _join(key, name), reads, _holds_sections(fields[name].annotation))
        attr = _bound_to_view(obj, name)
        if isinstance(attr, property):
            return attr.fget(self)
        if isinstance(attr, types.FunctionType):
            return types.MethodType(attr, self)
        if name == "model_dump":
            return self._model_dump
        value = getattr(obj, name)  # pydantic's API (model_copy, model_fields...): the whole section
        self._note_all()
        return value

    def _model_dump(self, *args: Any, exclude: Any = None, include: Any = None, **kwargs: Any) -> Any:
        names = set(type(self._obj).model_fields)
        if isinstance(include, (set, frozenset, list, tuple)):
            names &= set(include)
        if isinstance(exclude, (set, frozenset, list, tuple)):
            names -= set(exclude)
        for name in names:
            self._reads.value(_join(self._key, name), None)
        return self._obj.model_dump(*args, exclude=exclude, include=include, **kwargs)

    def _note_all(self) -> None:
        for name in type(self._obj).model_fields:
            self._reads.value(_join(self._key, name), None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("params are read-only")

    def __bool__(self) -> bool:  # `if decay.rewarm:` reads that the section is set (a null one is a value)
        self._reads.presence(self._key)
        return True

    def __eq__(self, other: Any) -> bool:
        self._note_all()
        return self._obj == unwrap(other)

    def __hash__(self) -> int:
        self._note_all()
        return hash(self._obj)

    def __repr__(self) -> str:
        return f"<recorded {self._key or 'params'}>"


class _Sections:
    """A mapping of name -> section (`sources`, `decays`, `merges`) seen through the recorder."""

    __slots__ = ("_obj", "_key", "_reads")

    def __init__(self, obj: dict, key: str, reads: Reads) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_reads", reads)

    def _items_read(self) -> None:
        self._reads.collection(self._key)

    def __getitem__(self, name: str) -> Any:
        if name not in self._obj:
            return self._reads.missing(self._key, name)
        return _wrap(self._obj[name], _join(self._key, name), self._reads)

    def get(self, name: str, default: Any = None) -> Any:
        self._items_read()
        return self[name] if name in self._obj else default

    def __contains__(self, name: object) -> bool:
        self._items_read()
        return name in self._obj

    def __iter__(self):
        self._items_read()
        return iter(self._obj)

    def __len__(self) -> int:
        self._items_read()
        return len(self._obj)

    def __bool__(self) -> bool:
        self._items_read()
        return bool(self._obj)

    def keys(self):
        self._items_read()
        return self._obj.keys()

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]

    def __repr__(self) -> str:
        return f"<recorded {self._key}>"
