"""Helpers of the fuzz suite (tests/test_fuzz.py): a small TOML writer, hostile values,
and a subprocess runner for the command line.

Kept out of the test file so the properties read as statements; nothing here asserts.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SCENES = ROOT / "scenes"

#: bytes a CLI subprocess may map (Taichi's CPU runtime starts well inside 4 GiB): an
#: allocation the code failed to refuse then fails here instead of swapping the machine
SUBPROCESS_ADDRESS_SPACE = 4 << 30
#: what diffsim itself is told it may allocate in a subprocess (runtime.check_memory)
SUBPROCESS_MAX_BYTES = 1 << 30


# -- TOML writing -------------------------------------------------------------------------
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_str(s: str) -> str:
    """A TOML basic string for ``s`` (quotes, backslashes and control characters escaped)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    return k if _BARE.match(k) else toml_str(k)


def toml_value(v) -> str:
    """TOML text of one value (inline tables for dicts, nan/inf spelled the TOML way)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(e) for e in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(e)}" for k, e in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def to_toml(raw: dict) -> str:
    """TOML text of a scene dict: top-level values, then [section] tables, then arrays of
    tables ([[masses]]); nested tables inside a section are written inline."""
    head, sections, arrays = [], [], []
    for k, v in raw.items():
        if isinstance(v, dict):
            body = "\n".join(f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items())
            sections.append(f"[{toml_key(k)}]\n{body}\n")
        elif isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
            for e in v:
                body = "\n".join(f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in e.items())
                arrays.append(f"[[{toml_key(k)}]]\n{body}\n")
        else:
            head.append(f"{toml_key(k)} = {toml_value(v)}")
    return "\n".join(head) + "\n\n" + "\n".join(sections + arrays)


def read_scene(name: str) -> dict:
    """The parsed TOML of a bundled scene."""
    return tomllib.loads((SCENES / f"{name}.toml").read_text(encoding="utf-8"))


# -- values ---------------------------------------------------------------------------------
#: the values the issue names, and the classic edges around them
EDGE_VALUES = [
    math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e300, -1e300, 5e-324, 1e-300,
    10**12, -(10**12), 2**63 - 1, -(2**63), 10**30, 0, -1, 1, 2,
    "false", "true", "1", "nan", "", "\u00e9\u00e8", "a\x00b", True, False,
    [], [1.0, 2.0], [math.nan], ["a"], {}, {"a": 1},
]


def hostile_scalars():
    return st.one_of(st.sampled_from(EDGE_VALUES), st.integers(),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                     st.booleans())


def hostile_values():
    """Scalars, lists and tables of hostile things, a few levels deep."""
    return st.recursive(
        hostile_scalars(),
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=8)


def has_nonfinite(v) -> bool:
    """Whether ``v`` holds a NaN or infinite float anywhere (lists, tables)."""
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return any(has_nonfinite(e) for e in v)
    if isinstance(v, dict):
        return any(has_nonfinite(e) for e in v.values())
    return False


def type_mismatch(kind: str, v) -> bool:
    """Whether ``v`` is not of the scene schema type ``kind`` (Key.type); independent
    of diffsim's own check on purpose."""
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if kind == "float":
        return not num(v)
    if kind == "int":
        return not (isinstance(v, int) and not isinstance(v, bool))
    if kind == "bool":
        return not isinstance(v, bool)
    if kind == "str":
        return not isinstance(v, str)
    if kind == "floats":
        return not (isinstance(v, list) and all(num(x) for x in v))
    if kind == "ints":
        return not (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v))
    if kind == "table":
        return not isinstance(v, dict)
    return False


def value_named(message: str, v) -> bool:
    """Whether an error message shows the scalar value ``v`` (repr or str, any case)."""
    low = message.lower()
    return any(s.lower() in low for s in {repr(v), str(v)})


# -- command line in a subprocess -------------------------------------------------------------
@dataclass
class Ran:
    argv: list
    returncode: int | None       # None: killed by the timeout (a hang)
    stdout: str
    stderr: str

    def describe(self) -> str:
        tail = self.stderr.strip().splitlines()[-6:]
        return (f"diffsim {' '.join(map(str, self.argv))}\n  exit {self.returncode}\n  stderr: "
                + "\n          ".join(tail))


def _limits():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_ADDRESS_SPACE, SUBPROCESS_ADDRESS_SPACE))


def run_python(args, *, cwd, timeout=60, stdin=None) -> Ran:
    """Run ``python ARGS`` with this checkout first on the path, a bounded address space
    and diffsim's memory limit; a timeout is reported as returncode None."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["DIFFSIM_MAX_BYTES"] = str(SUBPROCESS_MAX_BYTES)
    env["MPLBACKEND"] = "Agg"
    env.pop("TI_LOG_LEVEL", None)     # as a user runs it (conftest sets it for pytest)
    try:
        r = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                           text=True, errors="replace", timeout=timeout, preexec_fn=_limits,
                           stdin=subprocess.DEVNULL if stdin is None else stdin)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Ran(list(args), None, out, err)
    return Ran(list(args), r.returncode, r.stdout, r.stderr)


def run_cli(argv, *, cwd, timeout=60) -> Ran:
    ran = run_python(["-m", "diffsim", *argv], cwd=cwd, timeout=timeout)
    ran.argv = list(argv)
    return ran


def clean_exit_problems(ran: Ran, allowed=(0, 1, 2)) -> list[str]:
    """What is wrong with how a subprocess ended: a hang, a signal, a traceback, an exit
    status outside ``allowed``. Empty when it ended cleanly."""
    bad = []
    if ran.returncode is None:
        bad.append("hung (killed by the test's timeout)")
    elif ran.returncode < 0:
        bad.append(f"killed by signal {-ran.returncode}")
    elif ran.returncode not in allowed:
        bad.append(f"exit status {ran.returncode}, expected one of {sorted(allowed)}")
    if "Traceback (most recent call last)" in ran.stderr:
        bad.append("printed a traceback")
    return bad


_DRIVER = r"""
import io, json, os, signal, sys, traceback


class _Hung(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hung()


def main(cases_file, results_file, timeout):
    from diffsim import cli
    signal.signal(signal.SIGALRM, _alarm)
    cases = json.load(open(cases_file))
    with open(results_file, "a") as res:
        for case in cases:
            res.write(json.dumps({"start": case["id"]}) + "\n")
            res.flush()
            os.chdir(case["cwd"])
            out, err = io.StringIO(), io.StringIO()
            sys.stdout, sys.stderr = out, err
            fresh = False
            signal.alarm(timeout)
            try:
                rc = cli.main(case["argv"])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except _Hung:
                rc, fresh = None, True
            except BaseException:
                err.write(traceback.format_exc())
                rc, fresh = 1, True
            finally:
                signal.alarm(0)
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            res.write(json.dumps({"id": case["id"], "rc": rc, "stdout": out.getvalue()[-20000:],
                                  "stderr": err.getvalue()[-20000:]}) + "\n")
            res.flush()
            if fresh:        # a traceback or a hang may leave the runtime broken: restart
                return


main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def run_cli_batch(cases, *, workdir, timeout=60) -> dict:
    """Run many ``diffsim ARGV`` invocations as ``cli.main(ARGV)`` calls in as few fresh
    subprocesses as possible (one Taichi start-up for all, instead of one each).

    ``cases``: list of (id, argv, cwd). Each call gets its own stdout/stderr and a
    ``timeout`` (SIGALRM; a hang is returncode None). A case that dies by a signal is
    reported with that signal; after a traceback, a hang or a death the remaining cases go
    on in a fresh process, so one broken runtime cannot fail the cases behind it.
    Returns id -> Ran.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    driver = workdir / "fuzz_driver.py"
    driver.write_text(_DRIVER)
    todo = [{"id": i, "argv": [str(a) for a in argv], "cwd": str(cwd)} for i, argv, cwd in cases]
    argvs = {c["id"]: c["argv"] for c in todo}
    results: dict = {}
    for attempt in range(len(todo) + 1):
        if not todo:
            break
        cf, rf = workdir / f"cases{attempt}.json", workdir / f"results{attempt}.jsonl"
        cf.write_text(json.dumps(todo))
        rf.write_text("")
        ran = run_python([driver, cf, rf, timeout], cwd=workdir,
                         timeout=timeout * len(todo) + 120)
        started = None
        for line in rf.read_text().splitlines():
            d = json.loads(line)
            if "start" in d:
                started = d["start"]
            else:
                results[d["id"]] = Ran(argvs[d["id"]], d["rc"], d["stdout"], d["stderr"])
                started = None
        if started is not None:
            # the process ended inside this case: a signal (returncode < 0), the batch
            # timeout (None), or an exit from below Python (Taichi's abort)
            note = f"\n[the process ended during this case with status {ran.returncode}]"
            rc = ran.returncode if ran.returncode is None or ran.returncode < 0 else 99
            results[started] = Ran(argvs[started], rc, ran.stdout, ran.stderr + note)
        elif ran.returncode != 0 and not results:
            raise RuntimeError(f"the fuzz driver failed to start:\n{ran.stderr[-3000:]}")
        todo = [c for c in todo if c["id"] not in results]
    return results


def json_objective(stdout: str):
    """The 'objective' of the one JSON object printed by ``--json`` (None if absent)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        return None
    return json.loads(lines[-1]).get("objective")
