"""Scene files: TOML loading, schema validation, ``--set`` overrides.

A scene is a TOML file with a top-level ``kind`` (which system/task builds it) and
sections whose keys are checked against the kind's schema: an unknown key, a wrong type,
NaN, or a value out of range raises :class:`~diffsim.errors.SceneError` naming the file,
the key and the value. Each kind module declares ``SCHEMA`` (section -> key -> Key) and
``build(scene) -> Task`` (a Problem that is a :class:`~diffsim.task.Task`); :data:`KINDS`
maps kind names to those modules.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import pathlib
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib
from typing import Any, Callable

from .errors import DiffsimError, SceneError

#: kind name -> module that defines SCHEMA, DESCRIPTION and build(scene)
KINDS = {
    "cannon": "diffsim.tasks.cannon",
    "ode": "diffsim.tasks.ode",
    "mass_spring": "diffsim.tasks.mass_spring",
    "control": "diffsim.tasks.control",
}

#: the bundled scenes ship inside the package (the repository's top-level ``scenes`` is a
#: link to this folder), so `pip install .` finds them from any working directory
SCENE_DIR = pathlib.Path(__file__).resolve().parent / "scenes"

_MISSING = object()
#: largest scene file read (the biggest bundled robot is ~20 KB)
MAX_SCENE_BYTES = 4 << 20


@dataclasses.dataclass
class Key:
    """Schema of one scene key.

    type: "float", "int", "bool", "str", "floats" (list of numbers), "ints",
    "table" (free-form dict checked by ``check``), "any".
    default: value when absent (``_MISSING`` makes the key required).
    lo/hi: inclusive bounds; lo_open/hi_open make them strict. choices: allowed strings.
    length: required list length (int) or a set of allowed lengths.
    check: extra validator ``f(value) -> str | None`` (an error message or None).
    renamed: old value -> its new name; an old value is refused naming the new one.
    """

    type: str
    default: Any = _MISSING
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    length: Any = None
    check: Callable | None = None
    renamed: dict | None = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING


REQUIRED = _MISSING


@dataclasses.dataclass
class Scene:
    """A validated scene: ``data[section][key]`` with defaults filled in."""

    kind: str
    name: str
    path: str
    description: str
    data: dict

    def __getitem__(self, section):
        return self.data[section]

    def error(self, message, key=None, value=_MISSING) -> SceneError:
        """A SceneError that names this scene's file (and key/value when given)."""
        return SceneError(message, file=self.path, key=key, value=None if value is _MISSING else value,
                          has_value=value is not _MISSING)


def _scene_dirs():
    return [SCENE_DIR] if SCENE_DIR.is_dir() else []


def bundled_scenes() -> dict[str, pathlib.Path]:
    """Name -> path of every scene shipped with diffsim."""
    out = {}
    for d in _scene_dirs():
        for p in sorted(d.glob("*.toml")):
            out.setdefault(p.stem, p)
    return out


def resolve(scene: str | pathlib.Path) -> pathlib.Path:
    """A bundled scene name or a path -> the file's path (SceneError if neither)."""
    p = pathlib.Path(scene)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise SceneError("no such scene file", file=str(p))
        if not p.is_file():
            raise SceneError("is not a regular file; pass a .toml scene file", file=str(p))
        return p
    found = bundled_scenes()
    if str(scene) in found:
        return found[str(scene)]
    raise SceneError(f"'{scene}' is neither a scene file nor a bundled scene "
                     f"(bundled: {', '.join(found) or 'none'}); `diffsim scenes` lists them")


def kind_module(kind: str, path: str = "", key: str = "kind"):
    if kind not in KINDS:
        raise SceneError(f"unknown scene kind; use one of {', '.join(sorted(KINDS))}",
                         file=path, key=key, value=kind, has_value=True)
    return importlib.import_module(KINDS[kind])


def parse_override(text: str) -> tuple[str, Any]:
    """'physics.drag=0.1' -> ('physics.drag', 0.1); the value is read as TOML, else a string."""
    if "=" not in text:
        raise SceneError(f"--set expects KEY=VALUE (e.g. physics.drag=0.1), got {text!r}")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part.strip() for part in key.split(".")):
        raise SceneError(f"--set expects KEY=VALUE with a key like section.name, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {raw}")
        if set(parsed) != {"v"}:
            raise SceneError(f"--set {key}: the value must be one TOML value, got {raw!r}; "
                             "pass one --set per key")
        value = parsed["v"]
    except RecursionError:
        raise SceneError(f"--set {key}: the value is nested too deeply") from None
    except tomllib.TOMLDecodeError:
        if raw.lower() in ("nan", "+nan", "-nan"):
            value = float("nan")
        else:
            value = raw
    return key, value


def _apply_override(raw: dict, key: str, value, path: str):
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SceneError("cannot set a key inside a non-table value", file=path, key=key)
        node = nxt
    node[parts[-1]] = value


def _type_ok(spec: Key, v) -> bool:
    num = (int, float)
    t = spec.type
    if t == "float":
        return isinstance(v, num) and not isinstance(v, bool)
    if t == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "bool":
        return isinstance(v, bool)
    if t == "str":
        return isinstance(v, str)
    if t == "floats":
        return isinstance(v, list) and all(isinstance(x, num) and not isinstance(x, bool) for x in v)
    if t == "ints":
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    if t == "table":
        return isinstance(v, dict)
    return True


_TYPE_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false",
               "str": "a string", "floats": "a list of numbers", "ints": "a list of integers",
               "table": "a table", "any": "a value"}


def check_value(spec: Key, v, *, path: str, key: str):
    """Validate one value against its Key; returns the value (ints widened to float)."""
    if not _type_ok(spec, v):
        raise SceneError(f"expected {_TYPE_WORDS[spec.type]}", file=path, key=key, value=v,
                         has_value=True)
    if spec.type == "float":
        v = float(v)
    if spec.type == "floats":
        v = [float(x) for x in v]
    nums = [v] if spec.type in ("float", "int") else (v if spec.type in ("floats", "ints") else [])
    for x in nums:
        if isinstance(x, float) and not math.isfinite(x):
            raise SceneError("must be a finite number (not NaN or inf)", file=path, key=key,
                             value=v, has_value=True)
        if spec.lo is not None and (x < spec.lo or (spec.lo_open and x == spec.lo)):
            op = ">" if spec.lo_open else ">="
            raise SceneError(f"must be {op} {spec.lo}", file=path, key=key, value=v, has_value=True)
        if spec.hi is not None and (x > spec.hi or (spec.hi_open and x == spec.hi)):
            op = "<" if spec.hi_open else "<="
            raise SceneError(f"must be {op} {spec.hi}", file=path, key=key, value=v, has_value=True)
    if spec.renamed and isinstance(v, str) and v in spec.renamed:
        raise SceneError(f"{v!r} was renamed; use {spec.renamed[v]!r}", file=path, key=key,
                         value=v, has_value=True)
    if spec.choices is not None and v not in spec.choices:
        raise SceneError(f"must be one of {', '.join(map(str, spec.choices))}", file=path,
                         key=key, value=v, has_value=True)
    if spec.length is not None:
        allowed = spec.length if isinstance(spec.length, (set, tuple, list)) else {spec.length}
        if len(v) not in allowed:
            raise SceneError(f"must have {' or '.join(map(str, sorted(allowed)))} entries",
                             file=path, key=key, value=v, has_value=True)
    if spec.check is not None:
        msg = spec.check(v)
        if msg:
            raise SceneError(msg, file=path, key=key, value=v, has_value=True)
    return v


#: old section/key -> its new name; an old one is refused naming the new (one [optimize]
#: section shared by every kind: diffsim.optim.optimize_schema)
RENAMED = {
    "optim": "[optimize]", "fit": "[optimize]",
    "optim.method": "optimize.optimizer", "optim.lr": "optimize.lr",
    "optim.iterations": "optimize.iterations", "optim.clip": "optimize.clip",
    "optim.max_grad_norm": "optimize.max_grad_norm",
    "fit.optimize": "optimize.params", "fit.optimizer": "optimize.optimizer",
    "fit.iterations": "optimize.iterations", "fit.lr": "optimize.lr",
    "task.optimize": "optimize.params",
}


def _renamed(key: str, path: str, section_too: bool = False) -> SceneError:
    new = RENAMED[key]
    sec = key.split(".")[0]
    more = f" (the [{sec}] section is now [optimize])" if section_too and "." in key else ""
    return SceneError(f"was renamed; use {new}{more}", file=path, key=key)


def validate(raw: dict, schema: dict, path: str) -> dict:
    """Check ``raw`` against ``schema`` (section -> key -> Key); fill defaults. An unknown
    key listed in :data:`RENAMED` is refused naming its new name."""
    out = {}
    for section, value in raw.items():
        if section not in schema:
            if section in RENAMED:
                for k in value if isinstance(value, dict) else ():
                    if f"{section}.{k}" in RENAMED:
                        raise _renamed(f"{section}.{k}", path, section_too=True)
                raise _renamed(section, path)
            raise SceneError(f"unknown section or key; known: {', '.join(schema)}", file=path,
                             key=section)
        if isinstance(schema[section], Key):
            continue
        if not isinstance(value, dict):
            raise SceneError("expected a table ([section])", file=path, key=section,
                             value=value, has_value=True)
        for k in value:
            if k not in schema[section]:
                if f"{section}.{k}" in RENAMED:
                    raise _renamed(f"{section}.{k}", path)
                raise SceneError(f"unknown key; known keys of [{section}]: "
                                 f"{', '.join(schema[section])}", file=path, key=f"{section}.{k}")
    for section, keys in schema.items():
        if isinstance(keys, Key):
            if section in raw:
                out[section] = check_value(keys, raw[section], path=path, key=section)
            elif keys.required:
                raise SceneError("is required", file=path, key=section)
            else:
                out[section] = keys.default
            continue
        given = raw.get(section, {})
        sec = {}
        for k, spec in keys.items():
            full = f"{section}.{k}"
            if k in given:
                sec[k] = check_value(spec, given[k], path=path, key=full)
            elif spec.required:
                raise SceneError("is required", file=path, key=full)
            else:
                sec[k] = spec.default
        out[section] = sec
    return out


COMMON = {
    "kind": Key("str", REQUIRED, "which system builds the scene"),
    "description": Key("str", "", "one line shown by `diffsim scenes`"),
}


def load(scene: str | pathlib.Path, overrides: list[str] | dict | None = None) -> Scene:
    """Load, override and validate a scene file (bundled name or path)."""
    path = resolve(scene)
    spath = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_SCENE_BYTES:
            raise SceneError(f"is {size} bytes; a scene file is at most {MAX_SCENE_BYTES}", file=spath)
        with open(path, "rb") as fh:        # bounded read: /dev/zero is "a file" too
            data = fh.read(MAX_SCENE_BYTES + 1)
        if len(data) > MAX_SCENE_BYTES:
            raise SceneError(f"is longer than {MAX_SCENE_BYTES} bytes; not a scene file", file=spath)
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SceneError(f"not valid TOML: {e}", file=spath) from None
    except UnicodeDecodeError as e:
        raise SceneError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=spath) from None
    except OSError as e:
        raise SceneError(f"cannot read: {e.strerror or e}", file=spath) from None
    except RecursionError:
        raise SceneError("nested too deeply to be a scene file", file=spath) from None
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for k, v in items:
        _apply_override(raw, k, v, spath)
    if "kind" not in raw:
        raise SceneError(f"is required (one of {', '.join(sorted(KINDS))})", file=spath, key="kind")
    if not isinstance(raw["kind"], str):
        raise SceneError("expected a string", file=spath, key="kind", value=raw["kind"], has_value=True)
    mod = kind_module(raw["kind"], spath)
    schema = {**COMMON, **mod.SCHEMA}
    data = validate(raw, schema, spath)
    sc = Scene(kind=data["kind"], name=path.stem, path=spath, description=data["description"],
               data=data)
    if hasattr(mod, "check_scene"):
        try:
            mod.check_scene(sc)
        except SceneError:
            raise
        except DiffsimError as e:       # a check that did not know the file: name it
            raise SceneError(str(e), file=spath) from None
    return sc


def build(scene, overrides=None, **kwargs):
    """Load a scene (name, path or Scene) and build its task: a
    :class:`diffsim.problem.Problem` that is also a :class:`diffsim.task.Task`."""
    from .task import Task
    sc = scene if isinstance(scene, Scene) else load(scene, overrides)
    task = kind_module(sc.kind, sc.path).build(sc, **kwargs)
    if not isinstance(task, Task):   # the contract every scene kind's build() keeps
        raise TypeError(f"scene kind {sc.kind!r}: build() returned a {type(task).__name__}, "
                        "not a diffsim.task.Task")
    return task


def describe_all() -> list[tuple[str, str, str]]:
    """(name, kind, description) of every bundled scene; unreadable ones say so."""
    rows = []
    for name, p in bundled_scenes().items():
        try:
            raw = tomllib.loads(p.read_text())
            rows.append((name, str(raw.get("kind", "?")), str(raw.get("description", ""))))
        except Exception as e:  # a broken bundled file must not hide the others
            rows.append((name, "?", f"(unreadable: {e})"))
    return rows
