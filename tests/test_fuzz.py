"""Property-based fuzzing of every input diffsim reads (issue #9).

Malformed scenes, ``--set`` values, data files and checkpoints, for every scene kind.
The properties:

* bad input is a :class:`~diffsim.errors.DiffsimError` (exit 2) whose message names the
  file, the key and the value; never another exception, a traceback or a signal;
* a scene that validates holds no NaN or infinity anywhere;
* on valid input, results agree with a closed-form reference.

Validation properties run in-process with many examples (no Taichi kernels). Anything
that builds a simulation runs the command line in a subprocess (a Taichi abort must fail
one test, not kill pytest) with a bounded address space and ``DIFFSIM_MAX_BYTES``, so an
allocation diffsim failed to refuse cannot take the machine's memory. The hand-picked
command lines run as ``cli.main`` calls in one restartable driver process
(``fuzz_helpers.run_cli_batch``: one Taichi start-up for ~80 cases; after a traceback, a
hang or a crash the rest go on in a fresh process). Hypothesis runs derandomized: CI sees
the same examples every time.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings, strategies as st

import diffsim
from diffsim import scene as scene_mod
from diffsim.checkpoint import load_checkpoint
from diffsim.errors import DiffsimError, SceneError
from diffsim.ode.data import read_csv

from fuzz_helpers import (SCENES, clean_exit_problems, has_nonfinite, hostile_values, json_objective,
                          read_scene, run_cli, run_cli_batch, run_python, to_toml, toml_value,
                          type_mismatch, value_named)

FAST = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# one subprocess per example: few examples, and no shrinking (each step costs seconds)
FEW = settings(max_examples=10, deadline=None, derandomize=True,
               phases=[Phase.explicit, Phase.reuse, Phase.generate],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: bundled scenes fuzzed, covering every kind and body generator
BASE_SCENES = ["cannon", "cannon_bounce", "spring_triangle", "cloth_drop", "robot_a",
               "oscillator", "lotka_volterra"]


def schema_keys(kind: str) -> dict:
    """'section.key' (or 'key' for top-level) -> Key of a kind's schema, with COMMON."""
    mod = scene_mod.kind_module(kind)
    out = {}
    for sec, keys in {**scene_mod.COMMON, **mod.SCHEMA}.items():
        if isinstance(keys, scene_mod.Key):
            out[sec] = keys
        else:
            out.update({f"{sec}.{k}": spec for k, spec in keys.items()})
    return out


def ode_param_keys(raw):
    """Keys of an ODE scene's free parameter tables, typed as numbers ('params.omega')."""
    from diffsim.ode.systems import SYSTEMS
    names = SYSTEMS[raw["system"]["name"]].param_names
    return {f"{sec}.{n}": scene_mod.Key("float", 1.0) for sec in ("params", "truth") for n in names}


def keys_of(name):
    raw = read_scene(name)
    keys = schema_keys(raw["kind"])
    if raw["kind"] == "ode":
        keys.update(ode_param_keys(raw))
    return raw, keys


def scene_file(tmp_path, raw, name="fuzz.toml") -> Path:
    p = tmp_path / name
    p.write_text(to_toml(raw), encoding="utf-8")
    return p


def walk_numbers(v):
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        yield v
    elif isinstance(v, (list, tuple)):
        for e in v:
            yield from walk_numbers(e)
    elif isinstance(v, dict):
        for e in v.values():
            yield from walk_numbers(e)


def assert_names_file(err: Exception, path) -> str:
    """Assert the error names ``path``; returns the message without it (so a key or
    value found later is not a piece of the path)."""
    msg = str(err)
    assert str(path) in msg, f"error does not name the file {path}: {msg}"
    return msg.replace(str(path), "<file>")


def names_key(msg: str, key: str, known: bool) -> bool:
    """A known key must be named in full; for an unknown dotted key, naming its first
    unknown part (e.g. the unknown section) is enough."""
    if known:
        return key in msg
    parts = key.split(".")
    return any(".".join(parts[:i]) in msg for i in range(1, len(parts) + 1))


#: keys that size arrays made while a scene is validated (mass_spring builds its body):
#: in-process examples keep them small, the CLI cases try the huge ones in a subprocess
SIZE_KEYS = ("body.nx", "body.ny")


def small_enough(key, value) -> bool:
    return not (key in SIZE_KEYS and isinstance(value, int) and not isinstance(value, bool)
                and value > 300)


def load_or_scene_error(path, overrides):
    """``scene.load``: a Scene, or the SceneError raised; any other exception fails."""
    try:
        return scene_mod.load(path, overrides)
    except SceneError as e:
        return e
    except DiffsimError as e:          # allowed, but it must still name the file
        return e


# -- scenes: one hostile value at any key -----------------------------------------------
@pytest.mark.parametrize("base", BASE_SCENES)
@FAST
@given(data=st.data())
def test_hostile_value_at_any_key_is_refused_by_name_or_validates(tmp_path, base, data):
    """Set one schema key (or an unknown one) to a hostile value: load returns a scene
    holding only finite numbers, or raises SceneError naming the file; a value of the
    wrong type, NaN or inf is refused naming that key and the value."""
    raw, keys = keys_of(base)
    path = scene_file(tmp_path, raw)
    unknown = ["bogus", "sim.bogus", "launch.sped", "sim.dt.x", "kind.x", "a.b.c"]
    key = data.draw(st.sampled_from(sorted(keys) + unknown), label="key")
    value = data.draw(hostile_values(), label="value")
    assume(small_enough(key, value))
    got = load_or_scene_error(path, {key: value})
    if isinstance(got, scene_mod.Scene):
        bad = [x for x in walk_numbers(got.data) if isinstance(x, float) and not math.isfinite(x)]
        assert not bad, f"validated scene holds {bad} after {key} = {value!r}"
        spec = keys.get(key)
        assert spec is not None, f"unknown key {key} = {value!r} was accepted"
        assert not type_mismatch(spec.type, value), f"{key} = {value!r} accepted for a {spec.type}"
        return
    msg = assert_names_file(got, path)
    spec = keys.get(key)
    if spec is None or (spec.type not in ("any",) and type_mismatch(spec.type, value)) \
            or (spec.type in ("float", "int", "floats", "ints") and has_nonfinite(value)):
        assert names_key(msg, key, spec is not None), f"{key} = {value!r}: {msg}"
        if spec is not None and not isinstance(value, (list, dict)):
            assert value_named(msg, value), f"{key} = {value!r}: value not named in {msg}"


@pytest.mark.parametrize("base", ["robot_a"])
@FAST
@given(data=st.data())
def test_hostile_mass_and_spring_tables(tmp_path, base, data):
    """[[masses]]/[[springs]] entries with hostile fields ('false' for pinned, NaN
    positions, float spring indices…): refused naming the entry and field, or valid."""
    raw = read_scene(base)
    table = data.draw(st.sampled_from(["masses", "springs"]), label="table")
    fields = {"masses": ["x", "y", "mass", "pinned", "vx", "vy", "bogus"],
              "springs": ["a", "b", "stiffness", "damping", "rest", "actuation", "bogus"]}[table]
    i = data.draw(st.integers(0, len(raw[table]) - 1), label="index")
    field = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(hostile_values(), label="value")
    raw[table][i][field] = value
    path = scene_file(tmp_path, raw)
    got = load_or_scene_error(path, None)
    expected_type = {"pinned": "bool", "a": "int", "b": "int"}.get(field, "float")
    wrong = field == "bogus" or type_mismatch(expected_type, value) or has_nonfinite(value)
    if isinstance(got, scene_mod.Scene):
        assert not wrong, f"{table}[{i}].{field} = {value!r} was accepted"
        return
    msg = assert_names_file(got, path)
    if wrong:
        assert f"{table}[{i}].{field}" in msg, f"{table}[{i}].{field} = {value!r}: {msg}"


@FAST
@given(base=st.sampled_from(BASE_SCENES), data=st.data())
def test_hostile_value_written_in_the_file(tmp_path, base, data):
    """The same through the TOML text: a hostile value written into the scene file."""
    raw, keys = keys_of(base)
    key = data.draw(st.sampled_from(sorted(k for k in keys if "." in k)), label="key")
    value = data.draw(hostile_values(), label="value")
    assume(small_enough(key, value))
    sec, k = key.split(".", 1)
    raw.setdefault(sec, {})[k] = value
    path = scene_file(tmp_path, raw)
    got = load_or_scene_error(path, None)
    if isinstance(got, scene_mod.Scene):
        assert not has_nonfinite(got.data), f"{key} = {value!r} validated with NaN/inf"
        assert not type_mismatch(keys[key].type, value), f"{key} = {value!r} accepted"
        return
    msg = assert_names_file(got, path)
    if keys[key].type != "any" and (type_mismatch(keys[key].type, value) or (
            keys[key].type in ("float", "int", "floats", "ints") and has_nonfinite(value))):
        assert names_key(msg, key, True), f"{key} = {value!r}: {msg}"


# -- scenes: broken files ---------------------------------------------------------------------
@FAST
@given(text=st.text(max_size=200))
def test_arbitrary_text_as_a_scene(tmp_path, text):
    """Any text as a scene file: a Scene or a SceneError naming the file."""
    path = tmp_path / "any.toml"
    path.write_text(text, encoding="utf-8")
    got = load_or_scene_error(path, None)
    if not isinstance(got, scene_mod.Scene):
        assert_names_file(got, path)


@FAST
@given(base=st.sampled_from(BASE_SCENES), data=st.data())
def test_mangled_scene_files(tmp_path, base, data):
    """A bundled scene with bytes cut, doubled, replaced by invalid UTF-8 or NULs."""
    blob = (SCENES / f"{base}.toml").read_bytes()
    at = data.draw(st.integers(0, len(blob)), label="at")
    how = data.draw(st.sampled_from(["cut", "dup", "latin1", "nul", "bom16", "junk"]), label="how")
    junk = data.draw(st.binary(max_size=16), label="junk")
    blob = {"cut": blob[:at], "dup": blob[:at] + blob[at // 2:],
            "latin1": blob[:at] + b"\xe9\xff\xfe" + blob[at:], "nul": blob[:at] + b"\x00" + blob[at:],
            "bom16": "kind = 'cannon'\n".encode("utf-16"), "junk": blob[:at] + junk + blob[at:]}[how]
    path = tmp_path / "mangled.toml"
    path.write_bytes(blob)
    got = load_or_scene_error(path, None)
    if not isinstance(got, scene_mod.Scene):
        assert_names_file(got, path)


@pytest.mark.parametrize("depth", [50, 1000, 100_000])
@pytest.mark.parametrize("shape", ["array", "table"])
def test_deeply_nested_toml(tmp_path, depth, shape):
    path = tmp_path / "deep.toml"
    if shape == "array":
        path.write_text("kind = 'cannon'\n[launch]\nspeed = " + "[" * depth + "]" * depth + "\n")
    else:
        path.write_text("kind = 'cannon'\nx = " + "{a = " * depth + "1" + "}" * depth + "\n")
    with pytest.raises(SceneError) as e:
        scene_mod.load(path)
    assert_names_file(e.value, path)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_set_value(depth):
    with pytest.raises(SceneError) as e:
        scene_mod.load("cannon", ["launch.speed=" + "[" * depth + "]" * depth])
    assert "launch.speed" in str(e.value)


def test_special_files_as_scenes(tmp_path):
    """A directory, /dev/zero, an empty file, a huge file, a missing one: SceneError."""
    d = tmp_path / "dir.toml"
    d.mkdir()
    big = tmp_path / "big.toml"
    with open(big, "w") as fh:
        fh.write("kind = 'cannon'\n[target]\nx = [")
        fh.write("1.0, " * (10**7 // 5 + 1))      # 10 MB: larger than any scene
        fh.write("1.0]\n")
    empty = tmp_path / "empty.toml"
    empty.write_bytes(b"")
    for p in (d, Path("/dev/zero"), empty, big, tmp_path / "missing.toml"):
        with pytest.raises(SceneError) as e:
            scene_mod.load(p)
        assert_names_file(e.value, p)


# -- --set -----------------------------------------------------------------------------
@FAST
@given(text=st.text(max_size=40))
def test_parse_override_of_any_text(text):
    """Any --set text: (key, value) with a well-formed dotted key, or SceneError."""
    try:
        key, _ = scene_mod.parse_override(text)
    except SceneError as e:
        assert "--set" in str(e) or "KEY=VALUE" in str(e)
        return
    parts = key.split(".")
    assert "=" in text and all(p.strip() for p in parts), f"{text!r} -> key {key!r}"


@pytest.mark.parametrize("text", ["launch.angle", "=1", " =1", "a..b=1", ".a=1", "a.=1",
                                  "launch..angle=0.5", "..=3", "=", "  "])
def test_malformed_set_is_refused_saying_what_is_wrong(text):
    with pytest.raises(SceneError) as e:
        scene_mod.load("cannon", [text])
    assert "--set" in str(e.value) and (text.strip() in str(e.value)), str(e.value)


@pytest.mark.parametrize("text", ["launch.angle=0.5\nlaunch.speed = 3", "launch.angle=0.5\n[x]\ny = 1",
                                  "launch.angle=0.5\r\nkind = 'ode'"])
def test_set_value_is_one_toml_value(text):
    """A --set value that holds more TOML after the value is refused, not half-used."""
    with pytest.raises(SceneError) as e:
        scene_mod.load("cannon", [text])
    assert "--set" in str(e.value) and "launch.angle" in str(e.value), str(e.value)


@FAST
@given(base=st.sampled_from(BASE_SCENES), data=st.data())
def test_set_text_of_hostile_values(base, data):
    """--set KEY=<TOML text of a hostile value> through parse_override: the same rules
    as a value in the file (refused naming the scene file and key, or valid)."""
    raw, keys = keys_of(base)
    key = data.draw(st.sampled_from(sorted(keys)), label="key")
    value = data.draw(hostile_values(), label="value")
    assume(small_enough(key, value))
    text = f"{key}={toml_value(value)}"
    path = SCENES / f"{base}.toml"
    got = load_or_scene_error(path, [text])
    if isinstance(got, scene_mod.Scene):
        assert not has_nonfinite(got.data), f"--set {text} validated with NaN/inf"
        return
    msg = assert_names_file(got, path)
    if keys[key].type in ("float", "int", "bool", "floats", "ints") and (
            type_mismatch(keys[key].type, value) or has_nonfinite(value)):
        # a TOML-invalid text falls back to a string: still a wrong type for these keys
        assert key in msg, f"--set {text}: {msg}"


# -- data files (fit --data) -------------------------------------------------------------------
CELLS = st.one_of(st.sampled_from(["nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e400", "",
                                   " ", "abc", "0", "-1", "1e-320", "0x10", "1_0", "∞"]),
                  st.floats(allow_nan=False, allow_infinity=False).map(repr))


@st.composite
def csv_texts(draw):
    """CSV text for a 2-state system (t,x,v): mostly the right header and increasing
    times, with hostile cells, and now and then a broken header, row or time order."""
    header = draw(st.sampled_from(["t,x,v"] * 6 + ["t,x", "x,t,v", "t,x,v,w", "", "t;x;v",
                                                  "T,X,V", "\ufefft,x,v"]))
    n = draw(st.integers(0, 8))
    times = sorted(set(draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))))
    rows = []
    for t in times:
        cells = [repr(t), draw(CELLS), draw(CELLS)]
        how = draw(st.sampled_from(["ok"] * 8 + ["short", "long", "hostile_time"]))
        if how == "short":
            cells = cells[:2]
        elif how == "long":
            cells.append(draw(CELLS))
        elif how == "hostile_time":
            cells[0] = draw(CELLS)
        rows.append(",".join(cells))
    return "\n".join([header] + rows) + "\n"


@FAST
@given(text=csv_texts())
def test_read_csv_of_hostile_rows(tmp_path, text):
    """Any CSV for a 2-state system: arrays with finite increasing times and no infinite
    values (NaN = unobserved is allowed), or DiffsimError naming the file."""
    path = tmp_path / "obs.csv"
    path.write_text(text, encoding="utf-8")
    try:
        ts, ys = read_csv(path, ["x", "v"])
    except DiffsimError as e:
        assert_names_file(e, path)
        return
    assert ts.ndim == 1 and ys.shape == (len(ts), 2) and len(ts) >= 1
    assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0)
    assert not np.any(np.isinf(ys)), f"infinite observations accepted: {ys.tolist()}"


@pytest.mark.parametrize("content", [b"\xff\xfe\x00t,x,v\n", b"t,x,v\n0,\xe9,1\n", b"\x00" * 64])
def test_read_csv_binary(tmp_path, content):
    path = tmp_path / "bin.csv"
    path.write_bytes(content)
    with pytest.raises(DiffsimError) as e:
        read_csv(path, ["x", "v"])
    assert_names_file(e.value, path)


def test_read_csv_directory_and_missing(tmp_path):
    for p in (tmp_path, tmp_path / "missing.csv"):
        with pytest.raises(DiffsimError) as e:
            read_csv(p, ["x", "v"])
        assert_names_file(e.value, p)


# -- checkpoints (--resume) --------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A real checkpoint: two Adam iterations of spring_triangle (mass_spring)."""
    out = tmp_path_factory.mktemp("ckpt")
    ran = run_cli(["optimize", "spring_triangle", "--iterations", "2", "--no-plot", "--json",
                   "--no-progress", "--out", out], cwd=out, timeout=120)
    assert ran.returncode == 0 and (out / "checkpoint.json").is_file(), ran.describe()
    return out


def _mutations():
    junk = st.one_of(hostile_values(), st.just(None))
    fields = ["version", "names", "x", "best_x", "best_f", "iterations", "history", "optimizer",
              "scale", "status"]
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("drop"), st.sampled_from(fields)),
        st.tuples(st.just("set"), st.sampled_from(fields), junk),
        st.tuples(st.just("entry"), st.sampled_from(["x", "best_x", "scale"]), junk),
        st.tuples(st.just("history"), st.sampled_from(["loss", "grad_norm", "x"]), junk),
        st.tuples(st.just("resize"), st.sampled_from(["x", "best_x", "scale"]), st.integers(0, 6)),
    )


def mutate_checkpoint(text: str, m) -> str:
    """JSON text of a checkpoint with one corruption ``m`` applied."""
    kind = m[0]
    if kind == "truncate":
        return text[: int(m[1] * (len(text) - 1))]
    d = json.loads(text)
    if kind == "drop":
        d.pop(m[1], None)
    elif kind == "set":
        d[m[1]] = m[2]
    elif kind == "entry" and isinstance(d.get(m[1]), list) and d[m[1]]:
        d[m[1]][0] = m[2]
    elif kind == "history" and isinstance(d.get("history"), dict):
        d["history"][m[1]] = m[2]
    elif kind == "resize" and isinstance(d.get(m[1]), list):
        d[m[1]] = (d[m[1]] * 7)[: m[2]]
    return json.dumps(d)   # NaN/inf become the non-standard NaN/Infinity tokens: also hostile


def test_checkpoint_scale_must_be_positive(checkpoint_dir, tmp_path):
    """Found by the search below: a negative parameter scale passed load_checkpoint."""
    d = json.loads((checkpoint_dir / "checkpoint.json").read_text())
    d["scale"] = [-1.0] + [1.0] * (len(d["x"]) - 1)
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps(d))
    for names in (d["names"], None):
        with pytest.raises(DiffsimError, match="'scale' must hold positive"):
            load_checkpoint(path, names)


@FAST
@given(m=_mutations())
def test_load_checkpoint_of_corrupted_files(checkpoint_dir, tmp_path, m):
    """Any corruption of a real checkpoint: load_checkpoint returns finite vectors of the
    right length, or raises DiffsimError naming the file. The CLI's early check (names
    None: the file's own names) accepts no file that the full check refuses for anything
    but a names mismatch."""
    text = (checkpoint_dir / "checkpoint.json").read_text()
    names = json.loads(text)["names"]
    path = tmp_path / "checkpoint.json"
    path.write_text(mutate_checkpoint(text, m))
    try:
        early = load_checkpoint(path, None)
    except DiffsimError as e:
        assert_names_file(e, path)
        early = None
    try:
        got = load_checkpoint(path, names)
    except DiffsimError as e:
        assert_names_file(e, path)
        assert early is None or early["x"].shape != (len(names),) or "do not match" in str(e), (m, e)
        return
    for k in ("x", "best_x"):
        assert got[k].shape == (len(names),) and np.all(np.isfinite(got[k])), (m, k, got[k])
    assert isinstance(got["iterations"], int) and got["iterations"] >= 0, m
    assert not math.isnan(got["best_f"]), m
    if got["scale"] is not None:
        assert np.all(np.isfinite(got["scale"])) and np.all(got["scale"] > 0), (m, got["scale"])


# -- the command line end to end -----------------------------------------------------------------
# Each case: id -> (setup(dir, checkpoint_text) -> (argv, names), allowed exit statuses, names).
# ``names`` are strings stderr must contain when the exit status is 2 (a tuple: any of
# them): the issue asks for the file, the key and the value.
CASES = {}


def case(id, allowed, names=()):
    def deco(setup):
        CASES[id] = (setup, set(allowed), list(names))
        return setup
    return deco


def grad_set(id, scene, sets, allowed, names, verb="grad"):
    """A case: ``diffsim VERB SCENE --set S… --json``."""
    argv = [verb, scene] + [a for s in sets for a in ("--set", s)] + ["--json"]
    CASES[id] = (lambda d, ck: (argv, []), set(allowed), list(names))


grad_set("speed_1e300", "cannon", ["launch.speed=1e300"], {2},
         ["cannon.toml", ("launch.speed", "sim.t_max", "sim.dt"), ("1e+300", "1e300")])
grad_set("cannon_dt_tiny", "cannon", ["sim.dt=1e-300"], {2}, ["cannon.toml", "sim.dt", "1e-300"])
grad_set("cannon_drag_nan", "cannon", ["physics.drag=nan"], {2}, ["cannon.toml", "physics.drag", "nan"])
grad_set("cannon_angle_inf", "cannon", ["launch.angle=inf"], {2}, ["cannon.toml", "launch.angle", "inf"])
grad_set("cannon_angle_list", "cannon", ["launch.angle=[1, 2]"], {2},
         ["cannon.toml", "launch.angle", "[1, 2]"])
grad_set("bool_as_string", "cannon", ['objective.maximize="false"'], {2},
         ["cannon.toml", "objective.maximize", "false"])
grad_set("bool_as_word", "cannon", ["objective.maximize=False"], {2},
         ["cannon.toml", "objective.maximize", "False"])
grad_set("bounces_1e12", "cannon_bounce", ["physics.bounces=1000000000000"], {2},
         ["cannon_bounce.toml", "physics.bounces", "1000000000000"])
grad_set("targets_1e4_far", "cannon", ["target.x=[" + ", ".join(["1e6"] * 10_000) + "]"], {0, 1, 2},
         ["cannon.toml", "target.x"])
grad_set("key_below_a_value", "cannon", ["sim.dt.x=1"], {2}, ["cannon.toml", "sim.dt"])
grad_set("unknown_key", "cannon", ["physics.bogus=1"], {2}, ["cannon.toml", "physics.bogus"])
grad_set("set_without_equals", "cannon", ["launch.angle"], {2}, ["--set", "launch.angle"])
grad_set("set_empty_key", "cannon", ["=1"], {2}, ["--set", "=1"])
grad_set("set_empty_part", "cannon", ["a..b=1"], {2}, ["--set", "a..b"])
grad_set("set_two_values", "cannon", ["launch.angle=0.5\nlaunch.speed = 3"], {2},
         ["--set", "launch.angle"])
grad_set("steps_1e12", "spring_triangle", ["sim.steps=1000000000000"], {2},
         ["spring_triangle.toml", "sim.steps", "1000000000000"])
grad_set("steps_negative", "spring_triangle", ["sim.steps=-5"], {2},
         ["spring_triangle.toml", "sim.steps", "-5"])
grad_set("dt_negative", "spring_triangle", ["sim.dt=-0.001"], {2},
         ["spring_triangle.toml", "sim.dt", "-0.001"])
grad_set("batch_1e7", "robot_a", ["sim.batch=10000000"], {2}, ["robot_a.toml", "sim.batch", "10000000"])
grad_set("hidden_1e9", "robot_a", ["controller.hidden=1000000000"], {2},
         ["robot_a.toml", "controller.hidden", "1000000000"])
grad_set("cloth_nx_1e5", "cloth_drop", ["body.nx=100000"], {2}, ["cloth_drop.toml", "body.nx", "100000"])


@case("pinned_as_string", {2}, ["masses[1].pinned", "false"])
def _(d, ck):
    p = d / "tables.toml"
    p.write_text(to_toml({"kind": "mass_spring", "sim": {"steps": 10, "has_ground": False},
                          "task": {"objective": "height"}, "optimize": {"params": ["stiffness"]},
                          "masses": [{"x": 0.0, "y": 0.5}, {"x": 0.1, "y": 0.5, "pinned": "false"}],
                          "springs": [{"a": 0, "b": 1, "stiffness": 100.0}]}))
    return ["grad", p, "--json"], [str(p)]
grad_set("spring_dt_1e300", "spring_triangle", ["sim.dt=1e300"], {1, 2}, ["spring_triangle.toml"])
grad_set("ode_dt_negative", "oscillator", ["solve.dt=-0.01"], {2}, ["oscillator.toml", "solve.dt", "-0.01"])
grad_set("ode_t1_1e12", "oscillator", ["solve.t1=1e12"], {2},
         ["oscillator.toml", ("solve.t1", "solve.dt"), ("1e+12", "1e12", "1000000000000")])
grad_set("ode_count_1e9", "oscillator", ["solve.dt=1e-8", "observe.count=1000000001"], {2},
         ["oscillator.toml", ("observe.count", "solve.dt"), ("1000000001", "1e-08")])
grad_set("ode_param_string", "oscillator", ['params.omega="2"'], {2},
         ["oscillator.toml", "params.omega", "2"])
grad_set("ode_y0_1e300", "lotka_volterra", ["solve.y0=[1e300, 1e300]"], {1, 2}, ["lotka_volterra.toml"])
grad_set("ode_t0_nan", "oscillator", ["solve.t0=nan"], {2}, ["oscillator.toml", "solve.t0", "nan"])
CASES["rtol_nan"] = (lambda d, ck: (["check", "cannon", "--rtol", "nan", "--json"], []), {2}, ["--rtol", "nan"])
CASES["rtol_negative"] = (lambda d, ck: (["check", "cannon", "--rtol", "-1", "--json"], []), {2}, ["--rtol"])
CASES["max_params_negative"] = (lambda d, ck: (["check", "cannon", "--max-params", "-3", "--json"], []),
                                {2}, ["--max-params"])
CASES["directions_zero"] = (lambda d, ck: (["check", "cannon_no_drag", "--all", "--max-params", "1",
                                            "--directions", "0", "--json"], []), {2}, ["--directions"])


def _out_case(id, argv_of):
    @case(id, {2})
    def _(d, ck):
        f = d / "taken"
        f.write_text("x")
        out = f / "sub" if id.endswith("_below") else f
        return argv_of(out, d) + ["--json"], [str(out), "--out"]


_out_case("out_is_a_file_run", lambda o, d: ["run", "cannon", "--out", o])
_out_case("out_is_a_file_below", lambda o, d: ["run", "cannon", "--out", o])
_out_case("out_is_a_file_optimize", lambda o, d: ["optimize", "spring_triangle", "--iterations", "1",
                                                  "--no-progress", "--out", o])
_out_case("out_is_a_file_sensitivity", lambda o, d: ["sensitivity", "oscillator", "--out", o])
_out_case("out_is_a_file_fit", lambda o, d: ["fit", "oscillator", "--data",
                                             SCENES / "data" / "lotka_volterra_noisy.csv", "--out", o])
CASES["fit_without_data_support"] = (lambda d, ck: (
    ["fit", "cannon", "--data", SCENES / "data" / "lotka_volterra_noisy.csv", "--no-plot", "--json",
     "--out", d / "o"], []), {2}, ["fit"])
CASES["fit_header_of_another_system"] = (lambda d, ck: (
    ["fit", "oscillator", "--data", SCENES / "data" / "lotka_volterra_noisy.csv", "--no-plot", "--json",
     "--out", d / "o"], []), {2}, ["lotka_volterra_noisy.csv", "t,x,v"])
CASES["sensitivity_cannon"] = (lambda d, ck: (["sensitivity", "cannon", "--no-plot", "--json",
                                               "--out", d / "o"], []), {0, 2}, ["cannon"])


def _scene_case(id, write):
    @case(f"scene_{id}", {2})
    def _(d, ck):
        p = d / f"{id}.toml"
        p = write(p) or p
        return ["grad", p, "--json"], [str(p)]


_scene_case("not_utf8", lambda p: p.write_bytes(b"kind = 'cannon'\n# \xff\xfe caf\xe9\n") and None)
_scene_case("malformed", lambda p: p.write_text("kind = 'cannon'\n[launch\nspeed = \n") and None)
_scene_case("nested", lambda p: p.write_text("kind = 'cannon'\nx = " + "[" * 100_000 + "]" * 100_000) and None)
_scene_case("dev_zero", lambda p: Path("/dev/zero"))
_scene_case("directory", lambda p: p.mkdir())
_scene_case("target_list_1e7", lambda p: p.write_text(      # 20 MB: refused before parsing
    "kind = 'cannon'\n[target]\nx = [" + "1," * 10**7 + "1]\n") and None)
_scene_case("empty", lambda p: p.write_text("") and None)
_scene_case("kind_number", lambda p: p.write_text("kind = 3\n") and None)


# fit --data: content (bytes) or a special path, and the allowed exit statuses
_GRID = np.linspace(0.0, 10.0, 101)


def _csv(rows, header="t,x,v"):
    return (header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n").encode()


DATA_CASES = {
    "inf_values": (_csv([(t, "inf", 0.0) for t in _GRID]), {2}),
    "nan_everywhere": (_csv([(t, "nan", "nan") for t in _GRID]), {2}),
    "empty_cells_everywhere": (_csv([(t, "", "") for t in _GRID]), {2}),
    "times_outside_span": (_csv([(t + 20.0, 1.0, 0.0) for t in _GRID]), {2}),
    "negative_times": (_csv([(-t - 1.0, 1.0, 0.0) for t in _GRID[::-1]]), {2}),
    "times_off_grid": (_csv([(t + 0.0037, 1.0, 0.0) for t in _GRID[:-1]]), {2}),
    "wrong_header": (_csv([(t, 1.0, 0.0) for t in _GRID], header="time,pos,vel"), {2}),
    "header_only": (b"t,x,v\n", {2}),
    "empty": (b"", {2}),
    "single_row": (_csv([(1.0, 0.5, 0.0)]), {0, 1, 2}),
    "huge_numbers": (_csv([(t, 1e300, -1e300) for t in _GRID]), {1, 2}),
    "not_utf8": (b"t,x,v\n0,1\xe9,0\n", {2}),
    "binary_zeros": (b"\x00" * 4096, {2}),
    "dev_zero": ("/dev/zero", {2}),
    "directory": ("DIR", {2}),
    "missing": ("MISSING", {2}),
}


def _data_case(name, content, allowed):
    @case(f"data_{name}", allowed)
    def _(d, ck):
        if content == "/dev/zero":
            data = Path("/dev/zero")
        elif content == "DIR":
            data = d / "d.csv"
            data.mkdir()
        elif content == "MISSING":
            data = d / "missing.csv"
        else:
            data = d / "obs.csv"
            data.write_bytes(content)
        return (["fit", "oscillator", "--data", data, "--iterations", "3", "--no-plot", "--no-progress",
                 "--json", "--out", d / "o"], [str(data)])


for _n, (_c, _a) in DATA_CASES.items():
    _data_case(_n, _c, _a)

CORRUPT_CHECKPOINTS = {
    "truncated": lambda d, t: t[: len(t) // 2],
    "empty": lambda d, t: "",
    "not_an_object": lambda d, t: "[1, 2, 3]",
    "x_wrong_length": lambda d, t: json.dumps({**d, "x": d["x"][:-1]}),
    "x_strings": lambda d, t: json.dumps({**d, "x": ["a"] * len(d["x"])}),
    "x_nan": lambda d, t: json.dumps({**d, "x": ["nan"] * len(d["x"])}),
    "best_f_list": lambda d, t: json.dumps({**d, "best_f": [1.0]}),
    "iterations_float": lambda d, t: json.dumps({**d, "iterations": 1.5}),
    "iterations_negative": lambda d, t: json.dumps({**d, "iterations": -1}),
    "adam_state_wrong_shape": lambda d, t: json.dumps(
        {**d, "optimizer": {"t": 1, "m": [0.0] * (len(d["x"]) + 3), "v": [0.0] * (len(d["x"]) + 3)}}),
    "adam_state_strings": lambda d, t: json.dumps({**d, "optimizer": {"t": "x", "m": "y", "v": None}}),
    "adam_state_nested": lambda d, t: json.dumps(
        {**d, "optimizer": {"t": 1, "m": [[0.0]] * len(d["x"]), "v": [["a"]] * len(d["x"])}}),
    "adam_state_t_negative": lambda d, t: json.dumps({**d, "optimizer": {"t": -3, "m": None, "v": None}}),
    "history_strings": lambda d, t: json.dumps({**d, "history": {"loss": ["a"], "grad_norm": [1.0]}}),
    "scale_negative": lambda d, t: json.dumps({**d, "scale": [-1.0] + [1.0] * (len(d["x"]) - 1)}),
    "names_nested": lambda d, t: json.dumps({**d, "names": [[n] for n in d["names"]]}),
}


def _checkpoint_case(name, corrupt, scene="spring_triangle"):
    @case(f"resume_{scene}_{name}", {2})
    def _(d, ck):
        p = d / "checkpoint.json"
        if corrupt == "directory":
            p.mkdir()
        else:
            p.write_text(corrupt(json.loads(ck), ck))
        # spring_triangle resumes, so its checkpoint file must be named; a kind that may
        # refuse --resume altogether may say so instead
        named = str(p) if scene == "spring_triangle" else (str(p), "--resume")
        return (["optimize", scene, "--resume", "--iterations", "4", "--no-plot", "--json",
                 "--no-progress", "--out", d], [named])


for _n, _c in CORRUPT_CHECKPOINTS.items():
    _checkpoint_case(_n, _c)
_checkpoint_case("directory", "directory")
for _s in ("cannon", "oscillator"):       # every kind: resuming over a broken file is refused
    _checkpoint_case("truncated", CORRUPT_CHECKPOINTS["truncated"], scene=_s)
del _n, _c, _a, _s


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, checkpoint_dir):
    """Every case of CASES run once, in batch (see fuzz_helpers.run_cli_batch)."""
    root = tmp_path_factory.mktemp("cli")
    ck = (checkpoint_dir / "checkpoint.json").read_text()
    batch, extra = [], {}
    for id, (setup, _, _) in CASES.items():
        d = root / id
        d.mkdir()
        argv, names = setup(d, ck)
        batch.append((id, argv, d))
        extra[id] = names
    results = run_cli_batch(batch, workdir=root / "_driver", timeout=60)
    return {id: (results[id], extra[id]) for id in CASES}


@pytest.mark.parametrize("id", list(CASES))
def test_cli_hostile_input(cli_results, id):
    """Exit status as allowed, never a traceback, a signal or a hang; an exit 2 names the
    file, key and value (or the argument) at fault."""
    _, allowed, names = CASES[id]
    ran, extra = cli_results[id]
    assert not clean_exit_problems(ran, allowed), ran.describe()
    if ran.returncode == 2:
        for want in names + extra:
            alts = want if isinstance(want, tuple) else (want,)
            assert any(a in ran.stderr for a in alts), f"stderr names none of {alts}\n{ran.describe()}"
    if ran.returncode == 0 and "--json" in ran.argv:
        f = json_objective(ran.stdout)
        assert f is None or (isinstance(f, float) and math.isfinite(f)), \
            f"exit 0 with objective {f!r}\n{ran.describe()}"


@pytest.mark.parametrize("scene,overrides,key", [
    ("cannon", "{'target.x': [100.0] * 10**7}", "target.x"),
    ("spring_triangle", "{'sim.batch': 10**7}", "sim.batch"),
    ("oscillator", "{'solve.y0': [1.0] * 10**7}", "solve.y0"),
])
def test_api_lists_of_1e7_are_refused(tmp_path, scene, overrides, key):
    """The library path (no 4 MB scene-file limit): 10**7 targets, batch members or
    initial values through an overrides dict are refused by DiffsimError naming the key,
    before anything that size is allocated."""
    code = (
        "import sys, diffsim\n"
        "diffsim.init(arch='cpu', precision='f64')\n"
        "try:\n"
        f"    diffsim.build({scene!r}, {overrides}).value_and_grad()\n"
        "    print('built')\n"
        "except diffsim.DiffsimError as e:\n"
        "    print('refused:', str(e)[:300])\n"
    )
    ran = run_python(["-c", code], cwd=tmp_path, timeout=120)
    assert not clean_exit_problems(ran, (0,)), ran.describe() + "\n" + ran.stdout[-2000:]
    assert "refused:" in ran.stdout and key in ran.stdout, ran.stdout[-2000:]


SET_SCENES = ["cannon", "cannon_bounce", "spring_triangle", "oscillator"]
SET_VALUES = ["nan", "inf", "-inf", "-1", "0", "1e300", "-1e300", "1000000000000", "5e-324",
              '"false"', "[1, 2]", "{a = 1}", "true", '""']


@FEW
@given(data=st.data())
def test_cli_set_of_any_key_to_a_hostile_value(tmp_path, data):
    """grad SCENE --set KEY=VALUE for a random schema key and hostile value, each in its
    own process: exit 0 with a finite objective, 1, or 2 naming the scene file and key;
    never a traceback, a signal or a hang."""
    scene = data.draw(st.sampled_from(SET_SCENES), label="scene")
    raw, keys = keys_of(scene)
    key = data.draw(st.sampled_from(sorted(k for k in keys if k not in ("kind", "description"))),
                    label="key")
    value = data.draw(st.sampled_from(SET_VALUES), label="value")
    ran = run_cli(["grad", scene, "--set", f"{key}={value}", "--json"], cwd=tmp_path, timeout=60)
    assert not clean_exit_problems(ran), ran.describe()
    if ran.returncode == 2:
        assert f"{scene}.toml" in ran.stderr, ran.describe()
    if ran.returncode == 0:
        f = json_objective(ran.stdout)
        assert isinstance(f, float) and math.isfinite(f), f"exit 0 with objective {f!r}\n{ran.describe()}"


# -- valid input agrees with a reference ---------------------------------------------------------
@pytest.fixture(scope="module")
def vacuum_cannon():
    """One cannon problem in vacuum with RK4 (speed, angle and height free), so random
    launches are evaluated without recompiling."""
    return diffsim.build("cannon", [
        "physics.drag=0.0", "sim.integrator=\"rk4\"", "sim.dt=0.01", "sim.t_max=25.0",
        'optimize.params=["angle", "speed", "height"]', "optimize.bounds.speed=[1.0, 80.0]",
        "optimize.bounds.height=[0.0, 100.0]", "target.x=[100.0]"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(angle=st.floats(0.05, 1.5), speed=st.floats(2.0, 80.0), height=st.floats(0.0, 100.0),
       gravity=st.floats(1.0, 30.0))
def test_cannon_in_vacuum_lands_at_the_closed_form(vacuum_cannon, angle, speed, height, gravity):
    """R = v cos θ (v sin θ + √(v² sin² θ + 2 g h)) / g and T = (v sin θ + √(…)) / g.

    Tolerance 1e-9 relative (+1e-9 m): RK4 integrates constant-acceleration motion
    exactly (the position is quadratic in t) and the landing is the root of the cubic
    Hermite interpolant of y over the step, which is exact for a quadratic; what remains
    is float64 rounding over ≤ 2500 steps and the Newton stopping test.
    """
    pb = vacuum_cannon
    x = pb.params.vector.copy()
    idx = pb.params.index
    x[idx["angle"]], x[idx["speed"]], x[idx["height"]], x[idx["gravity"]] = angle, speed, height, gravity
    o = pb.landing(x)
    vs, vx = speed * math.sin(angle), speed * math.cos(angle)
    T = (vs + math.sqrt(vs * vs + 2 * gravity * height)) / gravity
    assume(T < 24.0)                         # lands inside the simulated horizon
    assert o["landed"][0]
    assert o["land_x"][0] == pytest.approx(vx * T, rel=1e-9, abs=1e-9)
    assert o["land_t"][0] == pytest.approx(T, rel=1e-9, abs=1e-9)


@pytest.fixture(scope="module")
def falling_pair(tmp_path_factory):
    """Two free masses joined by a spring at its rest length, no ground, no damping:
    moving together, the spring never acts."""
    p = tmp_path_factory.mktemp("pair") / "pair.toml"
    p.write_text(to_toml({"kind": "mass_spring", "sim": {"steps": 200, "dt": 0.005, "gravity": -9.81,
                                                          "has_ground": False, "damping": 0.0},
                          "task": {"objective": "height"}, "optimize": {"params": ["vx0", "vy0"]},
                          "masses": [{"x": 0.0, "y": 1.0}, {"x": 0.3, "y": 1.4}],
                          "springs": [{"a": 0, "b": 1, "stiffness": 1000.0, "damping": 1.0}]}))
    return diffsim.build(p)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(vx=st.floats(-5.0, 5.0), vy=st.floats(-5.0, 5.0))
def test_mass_spring_free_fall_matches_the_discrete_closed_form(falling_pair, vx, vy):
    """Semi-implicit Euler in uniform gravity has an exact discrete solution:
    v_n = v0 + n g dt, y_n = y0 + n dt vy0 + g dt² n(n+1)/2, x_n = x0 + n dt vx0.

    Tolerance 1e-9 m: the spring stays at its rest length (|l - L| ~ 1e-16 m, force
    ≲ 1e-13 N) and 200 steps of float64 rounding are far below it.
    """
    pb = falling_pair
    x = pb.params.vector.copy()
    for i in range(2):
        x[pb.params.index[f"vx0[0,{i}]"]] = vx
        x[pb.params.index[f"vy0[0,{i}]"]] = vy
    pb.objective(x)
    tr = pb.sim.trajectory()[0]                       # (steps + 1, 2 masses, 2)
    n = np.arange(tr.shape[0])[:, None]
    dt, g = 0.005, -9.81
    x0, y0 = np.array([0.0, 0.3]), np.array([1.0, 1.4])
    np.testing.assert_allclose(tr[:, :, 0], x0 + n * dt * vx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(tr[:, :, 1], y0 + n * dt * vy + g * dt * dt * n * (n + 1) / 2,
                               rtol=0, atol=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(omega=st.floats(0.3, 3.0), zeta=st.floats(0.0, 0.95), x0=st.floats(-2.0, 2.0),
       v0=st.floats(-2.0, 2.0))
def test_ode_oscillator_matches_the_closed_form(omega, zeta, x0, v0):
    """Underdamped oscillator x'' = -ω² x - 2ζω x' against
    x(t) = e^{-ζωt} (x0 cos ω_d t + (v0 + ζω x0)/ω_d sin ω_d t), ω_d = ω√(1-ζ²).

    Tolerance 1e-8 absolute: RK4's global error is about T ω⁵ h⁴ / 120 · max|y| ≲ 1e-11
    for T = 5, h = 1e-3, ω ≤ 3, |y| ≲ 10.
    """
    from diffsim.ode.systems import SYSTEMS
    ts = np.linspace(0.0, 5.0, 11)
    sol = diffsim.solve(SYSTEMS["oscillator"], (0.0, 5.0), np.array([x0, v0]),
                        np.array([omega, zeta]), dt=1e-3, saveat=ts)
    wd = omega * math.sqrt(1 - zeta * zeta)
    ref = np.exp(-zeta * omega * ts) * (x0 * np.cos(wd * ts) + (v0 + zeta * omega * x0) / wd * np.sin(wd * ts))
    np.testing.assert_allclose(sol.ys[0][:, 0], ref, atol=1e-8, rtol=0)


def test_a_denormal_value_is_quoted_as_written():
    """Taichi's init turns on flush-to-zero for its process, after which Python parses
    5e-324 as 0.0: the CLI validates the scene before it initialises Taichi. Needs a fresh
    process (the batched CLI driver above has Taichi running already)."""
    r = subprocess.run([sys.executable, "-m", "diffsim", "grad", "oscillator", "--set",
                        "solve.dt=5e-324"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "solve.dt" in r.stderr and ("5e-324" in r.stderr or "4.94" in r.stderr), r.stderr
