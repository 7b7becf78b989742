"""Loading recipes: YAML, `--set KEY.PATH=VALUE` overrides, and one clear line per fault."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from geoprep.core.errors import UserError
from geoprep.recipe.model import Recipe

#: Recipes are small: a larger file is a mistake (a data file named as the recipe).
M = TypeVar("M", bound=BaseModel)

MAX_RECIPE_BYTES = 1 << 20
#: Deeper nesting than any recipe section needs is refused before YAML builds it.
MAX_DEPTH = 64
#: Values are echoed in errors up to this many characters.
_MAX_SHOWN = 60


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing duplicate keys (YAML says keys are unique; PyYAML keeps the
    last one silently) and nesting deeper than MAX_DEPTH."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(
                    f"nesting deeper than {MAX_DEPTH} levels at line {mark.line + 1}"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"unhashable key {_shown(key)}", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """YAML text → Python values, with unique keys and bounded nesting (yaml.YAMLError else)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels") from None


def read_text(path: Path, what: str = "recipe") -> str:
    """A recipe's (or config's) text: UTF-8 (a BOM is allowed), not too large; UserError else."""
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a {what} file")
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise UserError(f"{path}: larger than {MAX_RECIPE_BYTES >> 20} MB; is it a {what}?")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: UTF-16 text; save the {what} as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}, line {line})") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem raises one `UserError` line per fault."""
    return load_settings(path, Recipe, overrides, "recipe")


def validate_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    return validate_settings(Recipe, data, source)


def load_settings(
    path: str | Path,
    model: type[M],
    overrides: list[str] | tuple[str, ...] = (),
    what: str = "recipe",
) -> M:
    """Any YAML file of typed settings (a recipe, geossl's training config): read it as UTF-8 with
    unique keys and bounded nesting, apply `--set` overrides, validate it into `model`; every
    problem is a `UserError` of one line per fault naming the file, the key and the value."""
    path = Path(path)
    text = read_text(path, what)
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of {what} keys, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return validate_settings(model, data, source=str(path))


def validate_settings(model: type[M], data: dict[str, Any], source: str = "<recipe>") -> M:
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {describe_error(err, data, model)}" for err in exc.errors()]
        raise UserError("\n".join(lines)) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
    booleans = list(_booleans_as_numbers(validated, data, []))
    if booleans:
        raise UserError(
            "\n".join(
                f"{source}: {path}: got {value}; expected a number" for path, value in booleans
            )
        )
    return validated


def _booleans_as_numbers(model: BaseModel, data: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
    """Where the recipe wrote true/false and the model took it as a number (pydantic's lax mode
    reads `seed: true` as 1): the dotted path and the value written."""
    if not isinstance(data, dict):
        return
    for name in type(model).model_fields:
        if name not in data:
            continue
        value, raw = getattr(model, name), data[name]
        where = [*path, name]
        yield from _compare(value, raw, where)


def _compare(value: Any, raw: Any, where: list[str]) -> Iterator[tuple[str, Any]]:
    if isinstance(raw, bool) and isinstance(value, int | float) and not isinstance(value, bool):
        yield ".".join(where), raw
    elif isinstance(value, BaseModel):
        yield from _booleans_as_numbers(value, raw, where)
    elif isinstance(value, dict) and isinstance(raw, dict):
        for key, item in value.items():
            if key in raw:
                yield from _compare(item, raw[key], [*where, str(key)])
    elif isinstance(value, list | tuple) and isinstance(raw, list | tuple):
        for index, (item, raw_item) in enumerate(zip(value, raw, strict=False)):
            yield from _compare(item, raw_item, [*where, str(index)])


def _key(part: Any) -> str:
    """A key for an error line: as written, or escaped when it holds control characters (a key
    may hold a line break, and the error must stay one line)."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def _shown(value: Any) -> str:
    """A value for an error line: short, whatever its size."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {_shown(item)}: expected KEY.PATH=VALUE, for example sampler.n=500")
    parts = key.strip().split(".")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise UserError(f"--set {_shown(item)}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe_error(
    err: dict[str, Any], data: dict[str, Any], root: type[BaseModel] = Recipe
) -> str:
    """One line: the key path, the offending value and what was expected."""
    loc, _ = _walk(list(err["loc"]), root)
    path = ".".join(_key(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_in(_walk(list(err["loc"])[:-1], root)[1])
        allowed = ", ".join(model.model_fields) if model is not None else "(none)"
        return f"{path}: unknown key; expected one of: {allowed}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        tag = ctx.get("discriminator", "'kind'").strip("'")
        got = _lookup(data, loc + [tag])
        expected = ctx.get("expected_tags", "").replace("'", "")
        return f"{path}.{tag}: got {_shown(got)}; expected one of: {expected}"
    message = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    given = err.get("input")
    if isinstance(given, dict) and kind == "value_error":
        return f"{path}: {message}"  # a check across keys: the section is not echoed
    return f"{path}: got {_shown(given)}; {message}"


def _walk(loc: list[Any], root: type[BaseModel] = Recipe) -> tuple[list[Any], Any]:
    """Follow an error location through the models: drop union tags, return the final node.

    Discriminated unions put the chosen tag into the location (('sampler', 'urban', 'n')); users
    never write it, so it is removed from what they see.
    """
    node: Any = root
    clean: list[Any] = []
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        members = _tagged_members(node)
        if members and str(part) in members:
            node = members[str(part)]
            continue
        clean.append(part)
        if get_origin(node) is dict:
            node = get_args(node)[1]  # a mapping key: step into the value type
            continue
        model = _model_in(node)
        field = model.model_fields.get(str(part)) if model is not None else None
        node = field.annotation if field is not None else None
    return clean, node


def _tagged_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """Tag → model for a union of models told apart by a Literal field (kind, mode, name)."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _tagged_members(args[0])
    members: dict[str, type[BaseModel]] = {}
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            for name in ("kind", "mode", "name"):
                field = arg.model_fields.get(name)
                if field is not None and get_origin(field.annotation) is Literal:
                    members.update(dict.fromkeys(get_args(field.annotation), arg))
    return members if len(members) > 1 else {}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model in an annotation such as `Spec`, `Spec | None` or `Annotated[Spec, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is dict:
        return None
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _lookup(data: Any, path: list[Any]) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data
