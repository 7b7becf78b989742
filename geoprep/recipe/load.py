"""Loading recipes: YAML, `--set KEY.PATH=VALUE` overrides, and one clear line per fault."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from geoprep.core.errors import UserError
from geoprep.recipe.model import Recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem raises one `UserError` line per fault."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read recipe ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of recipe keys, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {describe_error(err, data)}" for err in exc.errors()]
        raise UserError("\n".join(lines)) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, for example sampler.n=500")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise UserError(f"--set {item!r}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    """One line: the key path, the offending value and what was expected."""
    loc, _ = _walk(list(err["loc"]))
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_in(_walk(list(err["loc"])[:-1])[1])
        allowed = ", ".join(model.model_fields) if model is not None else "(none)"
        return f"{path}: unknown key; expected one of: {allowed}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        tag = ctx.get("discriminator", "'kind'").strip("'")
        got = _lookup(data, loc + [tag])
        expected = ctx.get("expected_tags", "").replace("'", "")
        return f"{path}.{tag}: got {got!r}; expected one of: {expected}"
    message = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    return f"{path}: got {err.get('input')!r}; {message}"


def _walk(loc: list[Any]) -> tuple[list[Any], Any]:
    """Follow an error location through the models: drop union tags, return the final node.

    Discriminated unions put the chosen tag into the location (('sampler', 'urban', 'n')); users
    never write it, so it is removed from what they see.
    """
    node: Any = Recipe
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
    """Tag → model for a union of models told apart by a Literal field (kind, mode)."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _tagged_members(args[0])
    members: dict[str, type[BaseModel]] = {}
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            for name in ("kind", "mode"):
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
