"""Read a devserver.yaml into a :class:`~devserver.spec.DevserverSpec`, or explain exactly why not.

Contract: :func:`load_spec` returns a spec or raises :class:`~devserver.errors.SpecError`; it never raises anything
else for any file content, never constructs Python objects from YAML tags, and finishes in bounded time (size and
node-count limits stop alias bombs and pathological nesting).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from devserver import registry
from devserver.errors import FieldError, Problem, SpecError
from devserver.spec import Cloud, DevserverSpec

MAX_BYTES = 1024 * 1024
# Nodes after alias expansion; a real spec has a few hundred.
MAX_NODES = 50_000
BUILTIN_LOCAL = "<built-in local>"


def _cloud_models() -> dict[str, type[BaseModel]]:
    """The spec's cloud models by their `provider` tag, read off the discriminated union."""
    union = typing.get_args(Cloud)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (tag,) = typing.get_args(model.model_fields["provider"].annotation)
        models[tag] = model
    return models


_CLOUD_MODELS = _cloud_models()

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """YAML's safe loader, plus: a key given twice in one mapping is an error, not a silent overwrite."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in result
        except TypeError:  # an unhashable key (a list or mapping as a key)
            raise yaml.constructor.ConstructorError(
                None, None, "a list or mapping cannot be a key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in the same mapping", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Constructor = Callable[[yaml.SafeLoader, yaml.ScalarNode], object]

# No spec field holds a number this long; Python itself refuses to print or parse an int of more than 4300 digits.
MAX_DIGITS = 4000
_TOO_LARGE = 10**MAX_DIGITS


class _ScalarError(yaml.constructor.ConstructorError):
    """A scalar YAML reads as a number or a date that Python cannot hold; `fix` says what to write instead."""

    def __init__(self, problem: str, mark: yaml.Mark, fix: str) -> None:
        super().__init__(None, None, problem, mark)
        self.fix = fix


_TOO_LONG_FIX = "write a number in the field's range (`devserver schema` gives each one)"
_UNREADABLE_FIX = {
    "a number": "write the number in decimal, e.g. 100, or quote it if it is text",
    "a date": "quote it if it is text, or write a real date (YYYY-MM-DD)",
}


def _scalar(construct: _Constructor, what: str) -> _Constructor:
    """`construct` (PyYAML's own constructor for an implicit int, float or timestamp), with the text its resolver
    matches but Python cannot convert (``0x_``, ``2026-13-45``) and the numbers too long to show in a problem
    (``1:30:...`` sexagesimal chains, thousands of digits) refused as located ConstructorErrors."""

    def checked(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> object:
        if what == "a number" and len(node.value) > MAX_DIGITS:
            raise _ScalarError(f"a number has more than {MAX_DIGITS} digits", node.start_mark, _TOO_LONG_FIX)
        try:
            value = construct(loader, node)
        except (ValueError, OverflowError):
            raise _ScalarError(f"{_clip(node.value)} is not {what}", node.start_mark, _UNREADABLE_FIX[what]) from None
        if isinstance(value, int) and abs(value) >= _TOO_LARGE:
            raise _ScalarError(f"a number has more than {MAX_DIGITS} digits", node.start_mark, _TOO_LONG_FIX)
        return value

    return checked


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:int", _scalar(yaml.constructor.SafeConstructor.construct_yaml_int, "a number")
)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:float", _scalar(yaml.constructor.SafeConstructor.construct_yaml_float, "a number")
)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _scalar(yaml.constructor.SafeConstructor.construct_yaml_timestamp, "a date")
)


def load_spec(path: Path | str) -> DevserverSpec:
    """Load and validate the spec at `path`."""
    source = str(path)
    path = Path(path)
    try:
        if path.is_dir():
            raise _fail(source, "is a directory", "pass the spec file inside it, e.g. devserver.yaml")
        if path.exists() and not path.is_file():
            # A FIFO or device would block or stream forever; a spec is always a regular file.
            raise _fail(source, "is not a regular file", "pass a YAML file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise _fail(source, f"is {size} bytes; a spec is at most {MAX_BYTES}", "pass the spec, not another file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise _fail(source, "does not exist", "check the path, or start from a file in examples/") from None
    except PermissionError:
        raise _fail(source, "cannot be read (permission denied)", "make it readable by this user") from None
    except OSError as exc:
        raise _fail(source, f"cannot be read ({exc.strerror})", "pass a regular file") from None
    return load_spec_bytes(data, source)


def load_builtin_local() -> DevserverSpec:
    """The built-in local default: a qemu devserver without cloud account (same file as examples/local.yaml)."""
    data = resources.files("devserver").joinpath("data/local.yaml").read_bytes()
    return load_spec_bytes(data, BUILTIN_LOCAL)


def load_spec_bytes(data: bytes, source: str = "<spec>") -> DevserverSpec:
    """Parse and validate spec file content."""
    if len(data) > MAX_BYTES:
        raise _fail(source, f"is {len(data)} bytes; a spec is at most {MAX_BYTES}", "pass the spec, not another file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(
            source, f"is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})", "save the file as UTF-8"
        ) from None
    document = _parse_yaml(text, source)
    if document is None:
        raise _fail(source, "is empty", "start from a file in examples/")
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise _fail(
            source, f"holds a {kind}, not a mapping of keys", "the top level must be keys like name: and cloud:"
        )
    _check_size(document, source)
    try:
        return DevserverSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(source, [_problem(error) for error in exc.errors()]) from None


def _parse_yaml(text: str, source: str) -> object:
    if "\x00" in text:
        raise _fail(source, "contains a NUL character", "save the file as plain UTF-8 text")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader subclass
    except yaml.constructor.ConstructorError as exc:
        where = _mark(exc.problem_mark)
        problem = exc.problem or "unsupported YAML"
        if "could not determine a constructor" in problem:
            problem = f"uses a YAML tag that specs do not allow ({problem.split('tag ', 1)[-1]})"
        fix = exc.fix if isinstance(exc, _ScalarError) else "write plain YAML: mappings, lists, strings, numbers"
        raise _fail(source, f"{where}{problem}", fix) from None
    except yaml.MarkedYAMLError as exc:
        where = _mark(exc.problem_mark)
        raise _fail(source, f"{where}is not valid YAML: {exc.problem}", "fix the YAML syntax there") from None
    except yaml.YAMLError as exc:
        raise _fail(source, f"is not valid YAML: {exc}", "fix the YAML syntax") from None
    except RecursionError:
        raise _fail(source, "is nested too deeply", "a spec needs only a few levels of nesting") from None


def _mark(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _check_size(document: object, source: str) -> None:
    """Count nodes as validation would see them (aliases expanded), stopping at MAX_NODES."""
    stack = [(document, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > 64:
            raise _fail(
                source, "expands to too many values (YAML aliases or nesting)", "write the spec without alias chains"
            )
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _fail(source: str, message: str, fix: str) -> SpecError:
    return SpecError(source, [Problem(path="", message=message, fix=fix)])


def _problem(error: Any) -> Problem:
    raw_loc = tuple(error["loc"])
    loc = _clean_loc(raw_loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = _show(error.get("input"))
    original = ctx.get("error")
    if isinstance(original, FieldError):
        path = loc + tuple(part for part in original.path.split(".") if part)
        shown = None if original.value is None else _show(original.value)
        return Problem(_render_path(path), original.message, original.fix, shown)
    field_model, field_name = _owner(raw_loc)
    hint = _description(field_model, field_name)
    if kind == "missing":
        return Problem(_render_path(loc), "is required", f"add {field_name}:" + (f" ({hint})" if hint else ""))
    if kind == "extra_forbidden":
        allowed = sorted(field_model.model_fields) if field_model else []
        close = difflib.get_close_matches(str(field_name), allowed, n=1)
        fix = f"did you mean {close[0]}?" if close else "remove it"
        if allowed:
            fix += f" Keys allowed here: {', '.join(allowed)}"
        return Problem(_render_path(loc), "is not a known key", fix)
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        expected = ctx.get("expected_tags", ", ".join(registry.names()))
        message = "needs a provider" if kind == "union_tag_not_found" else "names an unknown provider"
        shown = _show(ctx.get("tag")) if kind == "union_tag_invalid" else None
        return Problem(_render_path((*loc, "provider")), message, f"set provider: to one of {expected}", shown)
    if kind == "literal_error":
        return Problem(_render_path(loc), "is not one of the allowed values", f"use one of {ctx['expected']}", value)
    if kind == "string_pattern_mismatch":
        return Problem(_render_path(loc), "has the wrong form", hint or f"match {ctx['pattern']}", value)
    # The remaining kinds (wrong type, out of range, too short...) carry a complete sentence: "Input should be ...".
    requirement = str(error["msg"]).replace("Input should", "should", 1)
    head = requirement.split(",")[0]
    fix = ""
    if head.startswith("should be "):
        fix = "make it " + head.removeprefix("should be ")
    elif head.startswith("should have "):
        fix = "give it " + head.removeprefix("should have ")
    return Problem(_render_path(loc), requirement, fix or hint or "correct the value", value)


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the discriminator tag pydantic inserts after a tagged union field (cloud.gce.zone -> cloud.zone)."""
    if len(loc) >= 2 and loc[0] == "cloud" and loc[1] in _CLOUD_MODELS:
        return (loc[0], *loc[2:])
    return loc


def _render_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _owner(loc: tuple[str | int, ...]) -> tuple[type[BaseModel] | None, str | int]:
    """The model class that holds the last field of `loc`, found by walking the spec's type annotations."""
    model: type[BaseModel] | None = DevserverSpec
    annotation: Any = None
    for index, part in enumerate(loc[:-1]):
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None, loc[-1]
        annotation = field.annotation
        model = _model_in(annotation, loc[index + 1 :], part)
    return model, loc[-1]


def _model_in(annotation: Any, rest: tuple[str | int, ...], part: str | int) -> type[BaseModel] | None:
    if part == "cloud":
        # A tagged union: the location's next element is the tag that picked the member.
        return _CLOUD_MODELS.get(str(rest[0])) if rest else None
    for candidate in _flatten(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        return [leaf for arg in typing.get_args(annotation) for leaf in _flatten(arg)]
    return [annotation]


def _description(model: type[BaseModel] | None, name: str | int) -> str:
    if model is None or not isinstance(name, str) or name not in model.model_fields:
        return ""
    return model.model_fields[name].description or ""
