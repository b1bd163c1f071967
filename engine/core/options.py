"""Capability configs as data: one dataclass per capability whose fields carry their help, choices, ranges and
text form. The CLI flags, the API parameters and the validation messages are all made from those fields, so
the three surfaces cannot drift apart: the same bad value is refused with the same words everywhere.

A config is a dataclass deriving from `Config`, its fields declared with `option(...)`:

    @dataclass
    class Example(Config):
        face: Path = option(help="face image or video", file=True)        # required: no default
        batch_size: int | None = option(None, help="frames per batch (empty: auto)", low=1, high=4096)
        pads: tuple[int, ...] = option((0, 10, 0, 0), help="TOP,BOTTOM,LEFT,RIGHT", text=int_tuple(4, "pads"))

`Example.build(values)` turns raw values (CLI text, Gradio component values, JSON) into a checked config;
`config.checked()` re-checks one built in Python. Names are the same everywhere: field `batch_size` is the
CLI flag `--batch-size` and the API parameter `batch_size`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from engine.core.errors import InputError

C = TypeVar("C", bound="Config")
_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


class _Problem(Exception):
    """One field's problem while building; collected so that every problem is reported at once."""


@dataclass(frozen=True)
class TextForm:
    """How a structured value (a list, a box, NAME=VALUE pairs) is written as one line of text, on the CLI and in
    the API. `parse` raises ValueError (or InputError) with a message that says what is accepted."""

    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    distinct: bool = False  # a list in which a value may appear once (providers, batch sizes)


@dataclass(frozen=True)
class Option:
    help: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    text: TextForm | None = None
    file: bool = False  # a file the user provides: a path on the CLI, an upload in the API
    many: bool = False  # with file: one or more files
    positional: bool = False  # the CLI takes it without a flag


def option(default: Any = dataclasses.MISSING, *, help: str, **kwargs: Any) -> Any:
    """A config field with its option metadata; no default means required."""
    if isinstance(default, list | dict | set):
        raise TypeError("option defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata={"option": Option(help=help, **kwargs)})


@dataclass(frozen=True)
class Field:
    name: str
    option: Option
    default: Any  # dataclasses.MISSING when required
    type: Any  # the annotation without None: bool, int, float, str, Path or tuple
    optional: bool  # None is accepted (and means what the help says)

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def words(self) -> str:
        return self.name.replace("_", " ")

    def text_of(self, value: Any) -> Any:
        """The value as the CLI and the API write it: text forms as text, paths as strings, None as None."""
        if value is None or value is dataclasses.MISSING:
            return None
        if self.option.text is not None:
            return self.option.text.format(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [str(v) for v in value]
        return value

    def coerce(self, raw: Any) -> Any:
        if raw is None:
            if self.required:
                raise _Problem(f"{self.words} is required: {self.option.help}")
            return self.default
        if isinstance(raw, list | tuple) and not raw and self.option.many and self.optional:
            return None  # no files chosen
        if isinstance(raw, str) and not raw.strip():
            if self.optional:
                return None
            if not self.required and self.text_of(self.default) == "":
                return self.default  # an empty list (no symbols) is written as empty text
            if self.type is not str or self.option.choices:
                raise _Problem(f"{self.words} is empty: {self.option.help}{self._accepted()}")
        value = self._convert(raw)
        self._check(value)
        return value

    def _accepted(self) -> str:
        """What an empty value could have been, where the help does not say it (`--precision=` was told only what
        auto means)."""
        if self.option.choices:
            several = " or more, comma-separated," if self.option.text is not None else ""  # a list: --runtime
            return f"; give one{several} of {', '.join(map(str, self.option.choices))}"
        if self.option.low is not None or self.option.high is not None:
            return f" [{_bounds(self.option.low, self.option.high)}]"
        return ""

    def _convert(self, raw: Any) -> Any:
        if self.option.text is not None:
            text = raw if isinstance(raw, str) else self.option.text.format(raw)
            try:
                return self.option.text.parse(text)
            except (ValueError, TypeError) as exc:
                raise _Problem(f"{self.words}: {exc}") from None
        if self.option.many:
            items = [raw] if isinstance(raw, str | os.PathLike) else list(raw)
            return tuple(Path(_path_text(self, v)) for v in items)
        if self.type is bool:
            return _to_bool(self, raw)
        if self.type is int:
            return _to_int(self, raw)
        if self.type is float:
            return _to_float(self, raw)
        if self.type is Path:
            return Path(_path_text(self, raw))
        if not isinstance(raw, str):
            raise _Problem(f"{self.words} must be text, got {_shown(raw)}")
        return raw.strip()

    def _check(self, value: Any) -> None:
        items = value if isinstance(value, tuple) else (value,)
        if self.option.choices:
            bad = [v for v in items if v not in self.option.choices]
            if bad:
                verb = "is" if len(bad) == 1 else "are"
                accepted = ", ".join(map(str, self.option.choices))
                raise _Problem(f"{self.words} {', '.join(map(_shown, bad))} {verb} not one of {accepted}")
        if self.option.text and self.option.text.distinct and len(set(value)) != len(value):
            raise _Problem(f"{self.words} {self.text_of(value)!r} lists a value twice")
        low, high = self.option.low, self.option.high
        if low is None and high is None:
            return
        numbers = [v for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
        out = [_shown(v) if isinstance(v, int) else _number(v) for v in numbers
               if (low is not None and v < low) or (high is not None and v > high)]  # fmt: skip
        if out:
            ends = _bounds(low, high)  # "0..": a bare lower bound read as a range cut short
            limit = f"below {ends[:-2]}" if high is None else f"above {ends[2:]}" if low is None else f"outside {ends}"
            raise _Problem(f"{self.words} {', '.join(out)} is {limit}")


def _shown(value: Any, limit: int = 60) -> str:
    """A value as a message quotes it (ints bare, the rest as repr), cut at ``limit`` characters: an API caller may
    send a 5000-character string or a 400-digit number, and a message need not repeat it."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _number(value: float) -> str:
    """Short where that is exact, else every digit (120.0000001 is not "120")."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def _bounds(low: float | None, high: float | None) -> str:
    """A range as text, whole limits in full (":g" showed 1048576 as 1.04858e+06)."""

    def text(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else f"{value:g}"

    return ("" if low is None else text(low)) + ".." + ("" if high is None else text(high))


def _path_text(field: Field, raw: Any) -> str:
    if not isinstance(raw, str | os.PathLike) or not str(raw).strip():
        raise _Problem(f"{field.words} must be a file path, got {_shown(raw)}")
    return os.fspath(raw)


def _to_bool(field: Field, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
        return raw.strip().lower() in _TRUE
    raise _Problem(f"{field.words} must be true or false (on/off), got {_shown(raw)}")


def _to_int(field: Field, raw: Any) -> int:
    if isinstance(raw, bool):
        raise _Problem(f"{field.words} must be a whole number, got {_shown(raw)}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise _Problem(f"{field.words} must be a whole number, got {_shown(raw)}")


def _to_float(field: Field, raw: Any) -> float:
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise _Problem(f"{field.words} must be a finite number, got {_shown(raw)}")
    return value


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
    origin = typing.get_origin(hint)
    return (origin if origin is tuple else hint), optional


@cache
def fields(cls: type) -> tuple[Field, ...]:
    """The option fields of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("option")
        if opt is None:
            continue
        base, optional = _base_type(hints[f.name])
        out.append(Field(f.name, opt, f.default, base, optional))
    return tuple(out)


class Config:
    """Base of the capability configs (dataclasses whose fields are declared with `option`)."""

    error: ClassVar[type[InputError]] = InputError  # what build() raises: the capability's own InputError

    def problems(self) -> list[str]:
        """Checks across fields (override); each problem says what is accepted."""
        return []

    @classmethod
    def build(cls: type[C], values: Mapping[str, Any]) -> C:
        """A checked config from raw values (missing ones take their defaults); every problem in one error."""
        known = {f.name: f for f in fields(cls)}
        problems = []
        unknown = sorted(set(values) - set(known))
        if unknown:
            problems.append(f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(known)}")
        kwargs = {}
        for name, f in known.items():
            try:
                kwargs[name] = f.coerce(values.get(name))
            except _Problem as exc:
                problems.append(str(exc))
        if not problems:
            config = cls(**kwargs)
            problems = config.problems()
            if not problems:
                return config
        raise cls.error("; ".join(problems))

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(type(self))}

    def validate(self) -> None:
        """Raise the capability's InputError when a value is not accepted."""
        self.checked()

    def checked(self: C) -> C:
        """This config re-built from its own values: coerced and checked as if it came from a front end."""
        return type(self).build(self.values())

    def to_text(self) -> dict[str, Any]:
        """JSON-ready values in the form the CLI and the API take (build() accepts it back)."""
        return {f.name: f.text_of(getattr(self, f.name)) for f in fields(type(self))}


def subset_config(cls: type[C], name: str, names: tuple[str, ...], doc: str) -> type[C]:
    """A config of some of `cls`'s fields, the same options (help, checks, flags) in `cls`'s order: one command that
    does part of another's work (a MuseTalk avatar prepared without speech) never restates its options."""
    chosen = [f for f in dataclasses.fields(cls) if f.name in names]
    missing = set(names) - {f.name for f in chosen}
    if missing:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(missing))}")
    specs = []
    for f in chosen:
        default = {} if f.default is dataclasses.MISSING else {"default": f.default}
        specs.append((f.name, f.type, dataclasses.field(metadata=f.metadata, **default)))
    made = dataclasses.make_dataclass(name, specs, bases=(Config,), namespace={"error": cls.error, "__doc__": doc})
    made.__module__ = cls.__module__  # the annotations are read in the module that wrote them
    return made


# ---------------------------------------------------------------------------------------------- text forms


def _split(text: str) -> list[str]:
    """The items of a comma- or space-separated list; an empty item between commas is refused, as dropping it
    would shift every later item (class labels paired with images by position)."""
    pieces = str(text).split(",")
    if len(pieces) > 1 and any(not p.strip() for p in pieces):
        raise ValueError(f"{str(text).strip()!r} has an empty item between commas: give each item once, e.g. 1,8,32")
    return [p for p in str(text).replace(",", " ").split() if p]


def word_tuple(what: str) -> TextForm:
    """Comma-separated words, at least one (choices are checked by the field)."""

    def parse(text: str) -> tuple[str, ...]:
        words = tuple(_split(text))
        if not words:
            raise ValueError(f"give at least one {what}")
        return words

    return TextForm(parse, lambda v: ",".join(map(str, v)), distinct=True)


def number_tuple(
    kind: type, count: int | None = None, distinct: bool | None = None, example: str | None = None
) -> TextForm:
    """Comma- or space-separated numbers (`kind` int or float): exactly `count` of them (a box, pads), or a list,
    of distinct values (batch sizes) unless `distinct` is False (class labels). `example` is what its messages show
    (batch sizes' 1,8,32,128 said nothing of pads)."""
    noun = "whole numbers" if kind is int else "numbers"
    example = example or _example(kind, count)

    def parse(text: str) -> tuple[Any, ...]:
        parts = _split(text)
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            raise ValueError(f"{text!r} is not a comma-separated list of {noun}, e.g. {example}") from None
        if not values or (count is not None and len(values) != count):
            many = f"{count} {noun}" if count else f"at least one of the {noun}"
            raise ValueError(f"give {many}, e.g. {example}")
        return values

    fmt = lambda v: ",".join(format(x, "g") if isinstance(x, float) else str(x) for x in v)  # noqa: E731
    return TextForm(parse, fmt, distinct=count is None if distinct is None else distinct)


def _example(kind: type, count: int | None) -> str:
    sample = ["1", "8", "32", "128"] if kind is int else ["0.5", "1", "2", "4"]
    return ",".join(sample[: count or 3])


def switch_tuple() -> TextForm:
    """on, off, or both (on,off): a switch a sweep may try both ways."""

    def parse(text: str) -> tuple[bool, ...]:
        words = [w.lower() for w in _split(text)]
        if not words or any(w not in _TRUE + _FALSE for w in words):
            raise ValueError(f"{text!r}: give on, off or on,off")
        return tuple(dict.fromkeys(w in _TRUE for w in words))

    return TextForm(parse, lambda v: ",".join("on" if x else "off" for x in v), distinct=True)


def is_whole_number(text: str) -> bool:
    """ASCII digits that int() takes: str.isdigit() also passes '²' and '٣', and int() refuses over 4300 digits."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def pairs() -> TextForm:
    """NAME=VALUE pairs with whole numbers >= 1, comma-separated (symbolic dimensions); empty text is none."""

    def parse(text: str) -> tuple[tuple[str, int], ...]:
        out: dict[str, int] = {}
        for part in (p for p in str(text).split(",") if p.strip()):
            name, sep, value = (v.strip() for v in part.partition("="))
            if not sep or not name or not is_whole_number(value) or int(value) < 1:
                raise ValueError(f"{part.strip()!r} is not NAME=VALUE with a whole number >= 1, e.g. seq=128")
            if name in out:
                raise ValueError(f"{name} is given twice")
            out[name] = int(value)
        return tuple(out.items())

    def fmt(value: Any) -> str:
        items = value.items() if isinstance(value, Mapping) else value
        return ",".join(f"{k}={v}" for k, v in items)

    return TextForm(parse, fmt, distinct=True)


# ---------------------------------------------------------------------------------------------- the CLI


def _default_text(f: Field) -> str:
    if f.type is bool:
        return "on" if f.default else "off"
    shown = f.text_of(f.default)
    return "none" if shown in (None, "") else str(shown)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """One flag per field (booleans as --x/--no-x), raw text in, so that build() gives the same messages as the
    API. Unset flags are absent from the namespace: the config's own defaults apply."""
    for f in fields(cls):
        choices = f" ({'|'.join(map(str, f.option.choices))})" if f.option.choices and not f.option.text else ""
        rng = f" [{_bounds(f.option.low, f.option.high)}]" if f.option.low is not None else ""
        default = "required" if f.required else f"default: {_default_text(f)}"
        help_text = f"{f.option.help}{choices}{rng}; {default}".replace("%", "%%")
        if f.option.positional:
            parser.add_argument(f.name, nargs=None if f.required else "?", default=argparse.SUPPRESS, help=help_text)
        elif f.type is bool:
            switch = argparse.BooleanOptionalAction
            parser.add_argument(f.flag, action=switch, default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = "FILE" if f.option.file else f.name.upper()
            many = {"nargs": "+", "action": "extend"} if f.option.many else {}  # repeated flags add up
            parser.add_argument(
                f.flag, default=argparse.SUPPRESS, required=f.required, metavar=metavar, help=help_text, **many
            )


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    names = {f.name for f in fields(cls)}
    return cls.build({k: v for k, v in vars(args).items() if k in names})


__all__ = [
    "Config",
    "Field",
    "Option",
    "TextForm",
    "add_arguments",
    "fields",
    "from_args",
    "number_tuple",
    "option",
    "pairs",
    "subset_config",
    "switch_tuple",
    "word_tuple",
]
