"""User ODE functions with the wrong output size or indices past the state/parameters are
refused with a DiffsimError before any real kernel runs (Taichi itself would segfault or
silently cut). Run in a subprocess: a regression would crash the interpreter."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    from diffsim.backend import ti
    from diffsim.errors import DiffsimError
    from diffsim.ode import ODE, solve, Dopri5

    @ti.func
    def too_few(t, y, p):
        return ti.Vector([y[1]])

    @ti.func
    def too_many(t, y, p):
        return ti.Vector([y[1], -y[0], y[0]])

    @ti.func
    def y_index(t, y, p):
        return ti.Vector([y[1], -y[2]])

    @ti.func
    def p_index(t, y, p):
        return ti.Vector([y[1], -p[3] * y[0]])

    @ti.func
    def good(t, y, p):
        return ti.Vector([y[1], -p[0] * y[0]])

    @ti.func
    def bad_y0(p):
        return ti.Vector([p[0]])

    cases = [("too_few", ODE(too_few, 2, 2), {}), ("too_many", ODE(too_many, 2, 2), {}),
             ("y_index", ODE(y_index, 2, 2), {}), ("p_index", ODE(p_index, 2, 2), {}),
             ("p_index_dopri", ODE(p_index, 2, 2), dict(solver=Dopri5())),
             ("bad_y0", ODE(good, 2, 2, y0=bad_y0), {}), ("good", ODE(good, 2, 2), {})]
    for name, ode, kw in cases:
        try:
            s = solve(ode, (0, 1), [1.0, 0.0], [4.0, 0.0], dt=0.01, gradient="discrete", **kw)
            print(name, "OK", round(s.y_final[0, 0], 6))
        except DiffsimError as e:
            print(name, "ERR", e)
''')


def test_mismatched_user_functions_are_refused(tmp_path):
    script = tmp_path / "user_odes.py"       # Taichi reads a ti.func's source from its file
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if " " in ln}
    assert out["too_few"].startswith("ERR rhs function too_few(t, y, p)")
    assert "returns 1 components but n_state = 2" in out["too_few"]
    assert "returns 3 components but n_state = 2" in out["too_many"]
    assert "y_index(t, y, p)" in out["y_index"] and "uses index 2 of a vector with 2" in out["y_index"]
    assert "p_index(t, y, p)" in out["p_index"] and "uses index 3" in out["p_index"]
    assert "uses index 3" in out["p_index_dopri"]
    assert "y0 function bad_y0(p)" in out["bad_y0"] and "returns 1 components" in out["bad_y0"]
    # x'' = -4x from (1, 0): x(1) = cos 2
    assert out["good"] == "OK -0.416147"
