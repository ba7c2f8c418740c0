"""The config engine: YAML dicts -> typed dataclass sections, `--set` overrides, variants.

Generic over any dataclass of sections: unknown keys are errors listing the valid ones, values
are checked against the field types, nested sections merge key by key. A section can declare
two things the engine honours without knowing the section:

* `EXTRA_KEYS = "<field>"`: keys that are not fields are gathered into that dict field (the
  loss section keeps its loss's own arguments beside `name`);
* `merge_into(base, update)` (a staticmethod on plain dicts): how an update replaces the
  section's keys (the imbalance section is one of two modes).

Values are checked with the library's own checks (`tfimb._checks`), reworded for keys.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any, Callable, Iterable

import yaml

from tfimb.errors import UsageError


class ConfigError(UsageError, ValueError):
    """A config that cannot be used, with the offending key and what is valid."""


# ---------------------------------------------------------------------------------------------
# Checks: the library's, naming a config key.


def check(check_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a `tfimb._checks` function on a config value, passing the key as its argument name;
    its error as a ConfigError naming the key
    (`check(_checks.check_classes, "evaluation.minority", [1, 4])`)."""
    try:
        return check_fn(*args, **kwargs)
    except ValueError as error:
        raise ConfigError(str(error).replace("for argument `", "for key `", 1)) from None


def one_of(key: str, value: Any, valid: Iterable[Any]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"Invalid value for key `{key}`. Expected one of {valid}. "
                          f"Received: {key}={value!r}")


def at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"Invalid value for key `{key}`. Expected an integer >= {low}. "
                          f"Received: {key}={value!r}")


def in_range(key: str, value: Any, check_fn: Callable[[Any], Any], expected: str) -> None:
    try:
        check_fn(value)
    except ValueError:
        raise ConfigError(f"Invalid value for key `{key}`. Expected {expected}. "
                          f"Received: {key}={value!r}") from None


# ---------------------------------------------------------------------------------------------
# dict -> dataclass with type checks and unknown-key errors.


def _section_type(annotation: Any) -> Any:
    """The dataclass inside `annotation` (Optional[X] -> X), else None."""
    if typing.get_origin(annotation) is typing.Union:
        annotation = [a for a in typing.get_args(annotation) if a is not type(None)][0]
    return annotation if dataclasses.is_dataclass(annotation) else None


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _convert(value, [a for a in args if a is not type(None)][0], key)
    if dataclasses.is_dataclass(annotation):
        return build(typing.cast(type, annotation), value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"Invalid value for key `{key}`. Expected a list. "
                              f"Received: {key}={value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is typing.Any or (isinstance(value, annotation)
                                    and not (annotation is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"Invalid value for key `{key}`. Expected {annotation.__name__}. "
                      f"Received: {key}={value!r}")


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a plain dict (not validated)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid value for section `{prefix}`. Expected a mapping of keys "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}. "
                          f"Received: {prefix}={raw!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = getattr(cls, "EXTRA_KEYS", None)
    raw = dict(raw)
    if extra:  # Keys beside the fields (and a literal `extra` key) go into the `extra` field.
        raw = {**{k: v for k, v in raw.items() if k in fields and k != extra},
               extra: {k: v for k, v in raw.items() if k not in fields or k == extra}}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            where = f"{prefix}." if prefix else ""
            raise ConfigError(f"Unknown key `{where}{key}`. Valid keys: "
                              f"{', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# YAML with each key once per mapping.

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConfigError):
    """A key written twice in one mapping. PyYAML keeps the last one silently, so a `loss:`
    written again at the bottom of a config would train a loss nobody reads at the top."""

    def __init__(self, key: str, first: Any, second: Any) -> None:
        self.key, self.lines = key, (first.line + 1, second.line + 1)
        where = (f"lines {first.line + 1} and {second.line + 1}" if first.line != second.line
                 else f"line {first.line + 1}, columns {first.column + 1} and "
                      f"{second.column + 1}")
        super().__init__(f"duplicate key `{key}` at {where}; a key may appear once per mapping "
                         "(the last would silently win).")


class UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader (the same tags, the same refusals) refusing a key twice in a mapping.
    The node tree is checked before anything is constructed, so the dotted path is known and
    a merge key's keys (`<<: *base`) may still be overridden once."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_keys(node, "", set())
        return super().construct_document(node)

    def _check_keys(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # An alias: checked where its anchor is.
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_keys(item, f"{path}[{i}]", seen)
        elif isinstance(node, yaml.MappingNode):
            marks: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                full = f"{path}.{name}" if path else name
                self._check_key(key_node, full, marks)
                self._check_keys(value_node, full, seen)

    def _check_key(self, key_node: yaml.Node, full: str, marks: dict[Any, Any]) -> None:
        """Keys compare as the values they construct to (`1` and `0x1`, `"a"` and `a` are
        one key to PyYAML too); complex keys (`? [a, b]`) are left to PyYAML."""
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            return
        key = self.construct_object(key_node)
        if key in marks:
            raise DuplicateKeyError(full, marks[key], key_node.start_mark)
        marks[key] = key_node.start_mark


def load_yaml(text: str) -> Any:
    """One YAML document, read with the safe loader and refusing duplicate keys
    (`DuplicateKeyError`); YAML syntax errors and refused tags raise `yaml.YAMLError`."""
    return yaml.load(text, Loader=UniqueKeyLoader)


# ---------------------------------------------------------------------------------------------
# Merging, overrides, variants.


def parse_override(text: str) -> dict:
    """`"a.b=value"` -> `{"a": {"b": value}}`, the value parsed as YAML (safe loader)."""
    if "=" not in text:
        raise ConfigError(f"Invalid value for `--set`. Expected key=value with a dotted key, "
                          f"e.g. train.epochs=10. Received: {text!r}")
    key, value = text.split("=", 1)
    try:
        nested = load_yaml(value)
    except yaml.YAMLError:
        raise ConfigError(f"Invalid value for `--set {key.strip()}`. Expected a YAML value "
                          f"(a number, a string, a [list] or a {{mapping}}). Received: "
                          f"{value!r}") from None
    except DuplicateKeyError as error:
        raise ConfigError(f"Invalid value for `--set {key.strip()}`. Expected a YAML value "
                          f"with each key once per mapping (the last would silently win). "
                          f"Received: {value!r}, with `{error.key}` twice.") from None
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def merge(base: Any, update: Any, cls: Any = None) -> Any:
    """Deep-merge `update` into `base` (dicts key by key; anything else replaces). With the
    dataclass `cls` the dicts describe, a section's own `merge_into` rule applies."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return copy.deepcopy(update)
    if cls is not None and hasattr(cls, "merge_into"):
        base = cls.merge_into(base, update)
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = (merge(out[key], value, _section_type(hints.get(key)))
                    if key in out else copy.deepcopy(value))
    return out


def expand_variants(raw: Any, cls: Any = None) -> list[tuple[str | None, dict]]:
    """A config with `variants: [{name: ..., <keys>}, ...]` -> one (name, config) per variant,
    each the shared keys merged with the variant's (by `cls`'s rules, when given); without
    variants, [(None, raw)]."""
    if not isinstance(raw, dict) or "variants" not in raw:
        return [(None, raw)]
    if not raw["variants"]:  # `variants: []` or null: the config itself.
        return [(None, {k: v for k, v in raw.items() if k != "variants"})]
    raw = dict(raw)
    variants = raw.pop("variants")
    if not isinstance(variants, list):
        raise ConfigError("Invalid value for key `variants`. Expected a list of mappings, each "
                          f"with a `name`. Received: variants={variants!r}")
    out = []
    for i, variant in enumerate(variants):
        if not isinstance(variant, dict) or not isinstance(variant.get("name"), str):
            raise ConfigError(f"Invalid value for key `variants[{i}]`. Expected a mapping with "
                              f"a string `name`. Received: {variant!r}")
        variant = dict(variant)
        name = variant.pop("name")
        out.append((name, merge(raw, variant, cls)))
    return out


def resolve_dataclass(cls: type, raw: Any, overrides: Iterable[str] = ()) -> Any:
    """Defaults of `cls`, then the YAML dict, then `--set` overrides, merged key by key;
    validated (`cls.validate()`), then `cls.resolved()` if it has one."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"Invalid config: expected a mapping of sections. Received: {raw!r}")
    build(cls, raw or {}, "")  # Unknown keys in the file are reported as such.
    merged = merge(cls().to_dict(), raw or {}, cls)
    for text in overrides:
        merged = merge(merged, parse_override(text), cls)
    config = build(cls, merged, "").validate()
    return config.resolved() if hasattr(config, "resolved") else config


def dump(config: Any) -> str:
    """A resolved config as YAML text (its `to_dict()` layout)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
