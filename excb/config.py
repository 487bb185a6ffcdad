"""Configs are data: nested dicts of defaults, YAML files and dotted ``key=value`` overrides.

``resolve_config(defaults, path, overrides)`` merges them and validates every key and type
against the defaults, so a typo is a one-line error that names the key and suggests the
nearest valid one, instead of a silently ignored setting.

A YAML file may name a parent with ``_base_: other.yaml`` (relative to itself).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import yaml

from excb import ExcbError

Config = Dict[str, Any]


def deep_update(base: Config, upd: Config) -> Config:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(cfg: Config, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get_dotted(cfg: Config, key: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def set_dotted(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = cfg
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def load_yaml(path: str | Path, _seen: Optional[List[Path]] = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise ExcbError(f"{path}: config file not found; pass an existing YAML file (see configs/)")
    seen = list(_seen or [])
    if path.resolve() in seen:
        raise ExcbError(f"{path}: _base_ cycle ({' -> '.join(str(p) for p in seen)})")
    seen.append(path.resolve())
    if path.is_dir():
        raise ExcbError(f"{path}: is a directory; pass a YAML file (e.g. one from configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ExcbError(f"{path}: not a text file (byte {e.start} is not UTF-8); pass a YAML config file") from e
    except OSError as e:
        raise ExcbError(f"{path}: cannot read config file ({e.strerror or e})") from e
    if "\x00" in text:
        raise ExcbError(f"{path}: not a text file (it holds NUL bytes); pass a YAML config file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ExcbError(f"{_yaml_where(path, e)}: not valid YAML ({_yaml_problem(e)})") from e
    if not isinstance(data, dict):
        raise ExcbError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base:
        parent = load_yaml(path.parent / base, seen)
        data = deep_update(parent, data)
    return data


def _yaml_where(path: Path, e: "yaml.YAMLError") -> str:
    """``file:line:column`` of a YAML error (1-based, like editors show them)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def _yaml_problem(e: "yaml.YAMLError") -> str:
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = "; ".join(p for p in parts if p) or str(e).splitlines()[0]
    return " ".join(text.split())


def parse_override(item: str) -> tuple:
    if "=" not in item:
        raise ExcbError(f"override '{item}': expected key=value, e.g. optim.lr=0.3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ExcbError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


class AllowFraction(int):
    """An int default that also accepts a fractional value (``epochs: 0.5``).

    Resolved configs hold plain ``int``/``float`` (integral values stay ints, so configs and their
    hashes read as before); the marker survives ``copy.deepcopy`` of the defaults and pickles /
    dumps as a plain int should it ever leak."""

    def __deepcopy__(self, memo: Any) -> "AllowFraction":
        return self

    def __copy__(self) -> "AllowFraction":
        return self

    def __reduce__(self):
        return (int, (int(self),))


yaml.SafeDumper.add_representer(AllowFraction, yaml.representer.SafeRepresenter.represent_int)


def _plain_numbers(cfg: Any) -> Any:
    if isinstance(cfg, dict):
        return {k: _plain_numbers(v) for k, v in cfg.items()}
    return int(cfg) if isinstance(cfg, AllowFraction) else cfg


def _type_name(v: Any) -> str:
    if isinstance(v, AllowFraction):
        return "int or float"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}.get(type(v), type(v).__name__)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the type of ``default``; ints are accepted for floats."""
    if default is None or value is None:
        return value
    if isinstance(default, AllowFraction) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ExcbError(f"{source}: key '{key}' must be {_type_name(default)} (like the default {default!r}), "
                    f"got {_type_name(value)} {value!r}")


def _suggest(key: str, valid: Iterable[str], label: str = "") -> str:
    valid = list(valid)
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not near:
        leaf = key.split(".")[-1]
        near = [v for v in valid if v.split(".")[-1] == leaf][:1]
    return f"; did you mean '{label}{near[0]}'?" if near else ""


# Keys whose values are free-form mappings (their own sub-keys are not validated).
FREE_KEYS = ("extra",)


def _validate(cfg: Config, defaults: Config, source: str, prefix: str = "", label: str = "") -> Config:
    """``cfg`` checked against ``defaults``; messages name keys as ``label + dotted key`` (a pipeline
    passes ``"linear."`` so ``linear.epoch=1`` is reported as ``linear.epoch``)."""
    out: Config = {}
    flat_valid = list(flatten(defaults, prefix).keys()) + [prefix + k for k in defaults]
    for k, v in cfg.items():
        full = prefix + k
        if k not in defaults:
            raise ExcbError(f"{source}: unknown key '{label}{full}'{_suggest(full, flat_valid, label)}")
        d = defaults[k]
        if isinstance(d, dict) and d and k not in FREE_KEYS:
            if not isinstance(v, dict):
                raise ExcbError(f"{source}: key '{label}{full}' is a section (mapping), got {_type_name(v)} {v!r}")
            out[k] = _validate(v, d, source, full + ".", label)
        else:
            out[k] = _coerce(label + full, v, d, source)
    return out


def resolve_config(defaults: Config, path: Optional[str | Path] = None,
                   overrides: Sequence[str] = (), base: Optional[Config] = None, label: str = "") -> Config:
    """Defaults <- ``base`` <- YAML file <- overrides, each layer validated against the defaults.

    ``label`` prefixes the overrides' keys in messages (the stage of a pipeline override)."""
    cfg = copy.deepcopy(defaults)
    if base:
        cfg = deep_update(cfg, _validate(base, defaults, "config"))
    if path is not None:
        data = load_yaml(path)
        cfg = deep_update(cfg, _validate(data, defaults, str(path)))
    for item in overrides:
        key, value = parse_override(item)
        nested: Config = {}
        set_dotted(nested, key, value)
        cfg = deep_update(cfg, _validate(nested, defaults, f"override '{label}{item}'", label=label))
    return _plain_numbers(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def require_positive(cfg: Config, keys: Iterable[str], source: str = "config") -> None:
    """Refuse non-positive values for the given dotted keys (batch sizes, epochs...)."""
    for key in keys:
        v = get_dotted(cfg, key)
        if v is not None and isinstance(v, (int, float)) and v <= 0:
            raise ExcbError(f"{source}: key '{key}' must be > 0, got {v!r}")


def merge_section(cfg: Config, section: Config, defaults: Config, source: str) -> Config:
    """``cfg`` updated with ``section`` after validating ``section`` against ``defaults``."""
    return deep_update(cfg, _validate(section, defaults, source))


def split_overrides(overrides: Sequence[str], sections: Iterable[str]) -> tuple:
    """Split ``a.b=c`` overrides into top-level ones and per-section ones (prefix stripped)."""
    sections = set(sections)
    top: List[str] = []
    per: Dict[str, List[str]] = {}
    for item in overrides:
        key = item.split("=", 1)[0]
        head = key.split(".", 1)[0]
        if head in sections and "." in key:
            per.setdefault(head, []).append(item[len(head) + 1:])
        else:
            top.append(item)
    return top, per
