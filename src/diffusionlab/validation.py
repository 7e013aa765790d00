"""Typed params sections and their validation, shared by every layer that declares params.

A section is a frozen pydantic model that rejects unknown keys (:class:`Section`); a *view* reads only the
sections and keys a stage needs and ignores the rest (:class:`View`). :func:`validate` checks a mapping
against a section strictly and turns pydantic's first error into one :class:`ConfigError` line that names
the key by its dotted path in params.yaml, with a "did you mean" for a typo. A union discriminated by a
field (``models.<name>``, discriminated by ``family``) gets messages that name its members.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import ConfigError

S = TypeVar("S", bound=BaseModel)
T = TypeVar("T")


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-4 (no dot) as a string.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
"""A finite number, also as YAML 1.1 writes it (``1e-4``)."""
Tuple = Annotated[tuple[T, ...], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
"""A YAML list, kept as a tuple (strict validation takes no list for a bare tuple)."""
Count = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """A frozen params section: unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class View(BaseModel):
    """The part of params.yaml a stage reads: its sections are checked, every other key is left to the stages
    that read it (``dvc.yaml`` lists each stage's params the same way)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def distinct(key: str, values: tuple, what: str) -> None:
    """Raise when ``values`` (params key ``key``) lists ``what`` (``a step``) twice."""
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise ValueError(f"{key} lists {what} twice ({twice[0]!r}); it must hold distinct {what.split(' ', 1)[1]}s")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in ``path``; a missing file or invalid YAML is one :class:`ConfigError` line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run the stages from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    return raw


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line naming the file, the line and column (1-based) and what the YAML parser expected."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        problem += f" ({context})"
    return f"{path} is not valid YAML{where}: {problem}; fix it there and run the stage again"


def validate(cls: type[S], raw: Any) -> S:
    """``raw`` as a ``cls``, checked strictly; the first error becomes a :class:`ConfigError` naming the key."""
    # Strict: YAML's true is no number and 1.5 no integer; Float and Tuple take what YAML writes instead.
    try:
        return cls.model_validate(raw, strict=True)
    except ValidationError as err:
        raise ConfigError(_message(cls, err.errors()[0])) from None


def replace(section: S, **changes: Any) -> S:
    """A copy of ``section`` with ``changes``, validated as params.yaml is (``model_copy`` checks nothing)."""
    return validate(type(section), {**section.model_dump(), **changes})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _tagged_union(tp: Any, discriminator: str | None = None) -> tuple[str, dict[str, type[BaseModel]]] | None:
    """(discriminator, {tag: member}) of a union discriminated by a field (``Field(discriminator=...)`` in its
    annotation, or ``discriminator`` as pydantic keeps it for a model's field), else None."""
    if get_origin(tp) is Annotated:
        tp, *extras = get_args(tp)
        discriminator = next((e.discriminator for e in extras if getattr(e, "discriminator", None)), discriminator)
    if discriminator is None or get_origin(tp) is not Union:
        return None
    return discriminator, {get_args(m.model_fields[discriminator].annotation)[0]: m for m in get_args(tp)}


def _members(root: Any) -> tuple[str, dict[str, type[BaseModel]]]:
    """The tagged union reachable from ``root`` (params.yaml holds one: the model blocks), or ("", {})."""
    seen, todo = set(), [(root, None)]
    while todo:
        tp, discriminator = todo.pop()
        if id(tp) in seen:
            continue
        seen.add(id(tp))
        union = _tagged_union(tp, discriminator)
        if union:
            return union
        if get_origin(tp) is dict:
            todo.append((get_args(tp)[1], None))
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            todo.extend((f.annotation, f.discriminator) for f in tp.model_fields.values())
    return "", {}


_MAPPING = "must be a mapping of keys to values"
_SAYS = {"int_type": "must be an integer", "float_type": "must be a number", "finite_number": "must be a finite number",
         "bool_type": "must be true or false", "string_type": "must be a string", "tuple_type": "must be a list",
         "model_type": _MAPPING, "model_attributes_type": _MAPPING, "dict_type": _MAPPING, "greater_than": "must be >",
         "greater_than_equal": "must be >=", "less_than": "must be <", "less_than_equal": "must be <="}
_LIMITS = ("gt", "ge", "lt", "le")
_PLURAL = {"family": "families"}


def _message(root: type[BaseModel], error: Any) -> str:
    """One line naming the key of a pydantic error by its dotted path in params.yaml."""
    tag, members = _members(root)
    loc, kind, value, ctx = error["loc"], error["type"], error["input"], error.get("ctx", {})
    (key, _), (parent, section) = _locate(root, loc, members), _locate(root, loc[:-1], members)
    member = next((name for name, cls in members.items() if cls is section), None)
    leaf, expected = str(loc[-1]) if loc else "", ctx.get("expected", "")
    owners = _members_with(members, leaf, value if kind == "literal_error" else ...) if member else []
    if kind == "value_error":
        return str(ctx["error"]) if str(ctx["error"]).startswith(key) else f"{key}: {ctx['error']}"
    if kind == "extra_forbidden" and len(owners) == 1:
        return f"{parent}: {leaf} {value!r} applies to {tag} '{owners[0]}' only; remove it from this '{member}' block"
    if kind in ("extra_forbidden", "literal_error") and owners:
        allowed = f"allowed: {expected.replace(' or ', ', ')}" if expected else f"{_PLURAL.get(tag, tag + ' values')} with it: {', '.join(owners)}"
        return f"{parent}: {leaf} {value!r} does not apply to {tag} '{member}' ({allowed})"
    if kind == "extra_forbidden" or leaf == "[key]":
        return f"unknown key {key} in params.yaml; {_hint(root, loc, members)}"
    if kind.startswith("union_tag"):
        choices = ", ".join(map(repr, members))
        return f"{key}.{tag} must be one of {choices}, got {value[tag]!r}" if kind == "union_tag_invalid" \
            else f"missing key {key}.{tag} in params.yaml (one of {choices})"
    if kind == "missing" or value is None:
        return f"missing key {key} in params.yaml" if kind == "missing" else f"{key} must not be null"
    if kind == "literal_error":
        return f"{key} must be one of {expected.replace(' or ', ', ')}, got {value!r}"
    limit = "".join(f" {v:g}" if isinstance(v, float) else f" {v}" for k, v in ctx.items() if k in _LIMITS)
    return f"{key or 'params.yaml'} {_SAYS[kind]}{limit}, got {value!r}" if kind in _SAYS else \
        f"{key or 'params.yaml'}: {error['msg']}"


def _members_with(members: dict[str, type[BaseModel]], key: str, value: Any = ...) -> list[str]:
    """The union members that have ``key`` (taking ``value`` for it, when given)."""
    return [name for name, cls in members.items() if key in cls.model_fields and (
        value is ... or value in get_args(cls.model_fields[key].annotation))]


def _locate(root: Any, loc: tuple, members: dict[str, type[BaseModel]]) -> tuple[str, Any]:
    """The dotted key of an error location, without the union tags pydantic adds, and the type held there."""
    key, tp = "", root
    for part in (p for p in loc if p != "[key]"):
        if get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        elif part in members:  # the tag of a discriminated union
            tp = members[part]
            continue
        key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}" if key else part
    return key, tp


def _keys(tp: Any, prefix: str = "") -> list[str]:
    """Every key under a section (or a mapping with Literal keys, such as ``datasets``)."""
    if get_origin(tp) is dict:
        keys = get_args(tp)[0]
        return [f"{prefix}{name}" for name in get_args(keys)] if get_origin(keys) is Literal else []
    fields = tp.model_fields.items() if isinstance(tp, type) and issubclass(tp, BaseModel) else ()
    return [k for name, f in fields for k in (f"{prefix}{name}", *_keys(f.annotation, f"{prefix}{name}."))]


def _hint(root: type[BaseModel], loc: tuple, members: dict[str, type[BaseModel]]) -> str:
    """Did you mean: the key of that name in another section, else the nearest key here or anywhere."""
    key = _locate(root, loc, members)[0]
    parent, tp = _locate(root, loc[:-2] if loc[-1] == "[key]" else loc[:-1], members)
    prefix = f"{parent}." if parent else ""
    here = _keys(tp, prefix)
    near = [k for k in _keys(root) if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    near = near or difflib.get_close_matches(key, here, n=1) or difflib.get_close_matches(key, _keys(root), n=1)
    names = [k[len(prefix):] for k in here if "." not in k[len(prefix):]]
    return f"did you mean {near[0]}?" if near else f"valid keys here: {', '.join(names)}"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the keys of ``over``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
