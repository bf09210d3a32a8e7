"""Mass-spring system: gradients vs central FD (float64), impact, bodies, scenes, CLI."""
import json

import numpy as np
import pytest

import diffsim
from diffsim.errors import SceneError
from diffsim.systems import bodies
from diffsim.systems.mass_spring import MassSpring

RTOL = 1e-6


def fd(sim, objective, name, idx, h):
    a0 = sim.get(name)
    vals = []
    for s in (+1, -1):
        a = a0.copy()
        a[idx] += s * h
        sim.set(**{name: a})
        vals.append(sim.forward(objective))
    sim.set(**{name: a0})
    return (vals[0] - vals[1]) / (2 * h)


def check(sim, objective, entries, rtol=RTOL, atol=1e-10, nonzero=False):
    """Reverse-mode gradient entries against central differences; ``nonzero``: also
    require each derivative to be non-zero (a zero one would test nothing)."""
    sim.forward(objective)
    g = sim.backward()
    for name, idx, h in entries:
        want = fd(sim, objective, name, idx, h)
        got = g[name][idx]
        assert abs(got - want) <= atol + rtol * abs(want), (name, idx, got, want)
        assert not nonzero or want != 0.0 or name == "none", (name, idx)


def bouncing_body(height=0.12, vy=-1.0):
    return bodies.Body(x=[[0.0, height], [0.1, height + 0.05]], mass=[1.0, 1.5], springs=[[0, 1]],
                       stiffness=50.0, damping=0.3, rest=0.12, actuation=0.2, pinned=False,
                       v=[[0.3, vy], [0.1, vy]])


def test_gradients_with_ground_contact_and_sine_controller():
    sim = MassSpring(bouncing_body(), steps=60, dt=0.005, gravity=-9.8, ground=0.0, friction=0.3,
                     restitution=0.5, damping=0.2, controller="sine", omega=7.0)
    sim.init_controller(1)
    sim.forward("shape")
    assert sim.trajectory()[0, :, :, 1].min() >= -1e-12          # it hits the ground
    assert sim.trajectory()[0, :, 0, 1].min() < 0.01
    check(sim, "shape", [("stiffness", (0, 0), 1e-5), ("damping", (0, 0), 1e-6), ("rest", (0, 0), 1e-7),
                         ("y0", (0, 0), 1e-7), ("vx0", (0, 1), 1e-7), ("vy0", (0, 0), 1e-7),
                         ("mass", (0, 1), 1e-7), ("amp", (0, 0), 1e-7), ("phase", (0, 0), 1e-7)],
          rtol=1e-5)


def test_gradients_neural_controller_robot_a_short():
    sim = MassSpring(bodies.robot("A"), steps=40, dt=0.004, gravity=-4.8, ground=0.1,
                     damping=15.0, friction=0.5, controller="neural", hidden=8, sines=4)
    sim.init_controller(3)
    check(sim, "distance", [("w1", (0, 2, 1), 1e-6), ("w1", (0, 5, 20), 1e-6), ("b1", (0, 3), 1e-6),
                            ("w2", (0, 4, 6), 1e-6), ("b2", (0, 7), 1e-6),
                            ("stiffness", (0, 3), 1e-2), ("rest", (0, 5), 1e-7), ("vx0", (0, 2), 1e-7)],
          rtol=1e-5)


def test_elastic_bounce_height_derivative_is_minus_one():
    # no gravity, moving down at 1 m/s from y0, elastic ground at 0: y(T) = -(y0 - T·dt) exactly
    b = bodies.Body(x=[[0.0, 0.0237]], mass=1.0, springs=np.zeros((0, 2), int), stiffness=[],
                    damping=[], rest=[], actuation=[], pinned=False, v=[[0.0, -1.0]])
    sim = MassSpring(b, steps=50, dt=0.001, gravity=0.0, ground=0.0, restitution=1.0)
    f = sim.forward("height")
    assert f == pytest.approx(0.05 - 0.0237, abs=1e-12)
    g = sim.backward()
    assert g["y0"][0, 0] == pytest.approx(-1.0, abs=1e-12)
    assert g["vy0"][0, 0] == pytest.approx(-0.05, abs=1e-12)


def test_batch_entries_are_independent():
    sim = MassSpring(bouncing_body(), batch=3, steps=30, dt=0.005, gravity=-9.8, ground=0.0,
                     controller="sine")
    sim.init_controller(0)
    sim.set(amp=np.array([[0.1], [0.5], [0.9]]))
    sim.forward("height")
    tr = sim.trajectory()
    assert not np.allclose(tr[0], tr[2])
    one = MassSpring(bouncing_body(), steps=30, dt=0.005, gravity=-9.8, ground=0.0, controller="sine")
    one.set(amp=0.5, phase=sim.get("phase")[1])
    one.forward("height")
    np.testing.assert_allclose(one.trajectory()[0], tr[1], atol=1e-13)


def test_robot_counts():
    for name, (n, s) in zip("ABCD", [(6, 11), (14, 30), (20, 46), (26, 61)]):
        b = bodies.robot(name)
        assert (b.n_masses, b.n_springs) == (n, s)


@pytest.mark.parametrize("masses,springs,key", [
    ([{"x": 0, "y": 0}, {"x": 1, "y": 0}], [{"a": 0, "b": 2}], "springs[0].b"),
    ([{"x": 0, "y": 0, "mass": 0.0}, {"x": 1, "y": 0}], [{"a": 0, "b": 1}], "masses[0].mass"),
    ([{"x": 0, "y": 0}, {"x": 1, "y": 0, "mass": -2}], [], "masses[1].mass"),
    ([{"x": 0, "y": 0}, {"x": 1, "y": 0}], [{"a": 0, "b": 1}, {"a": 0, "b": 1, "rest": 0.0}], "springs[1].rest"),
    ([{"x": 0, "y": 0}, {"x": 0, "y": 0}], [{"a": 0, "b": 1}], "springs[0]"),
])
def test_malformed_bodies_rejected(tmp_path, masses, springs, key):
    import tomllib  # noqa: F401  (scene files are TOML)
    lines = ['kind = "mass_spring"', "[task]", 'objective = "height"', "[optimize]", 'params = ["stiffness"]']
    for m in masses:
        lines.append("[[masses]]\n" + "\n".join(f"{k} = {v}" for k, v in m.items()))
    for s in springs:
        lines.append("[[springs]]\n" + "\n".join(f"{k} = {v}" for k, v in s.items()))
    p = tmp_path / "bad.toml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneError) as e:
        diffsim.load(p)
    assert key in str(e.value) and "bad.toml" in str(e.value)


def test_robot_a_walks_forward_after_a_few_iterations():
    pb = diffsim.build("robot_a", ["sim.steps=150", 'optimize.optimizer="gd"', "optimize.lr=0.5"])
    r = pb.run_optimization(iterations=6, progress=False, plots=False)
    loss = r["history"]["loss"]
    assert min(loss[1:]) < loss[0]          # objective = -distance: it walks further


def test_problem_gradcheck_triangle():
    pb = diffsim.build("spring_triangle", ["sim.steps=200"])
    rep = diffsim.gradcheck(pb, rtol=1e-6, atol=1e-12)
    assert rep.ok, rep.table()


def test_identification_recovers_stiffness():
    pb = diffsim.build("cloth_drop", ["body.nx=3", "sim.steps=120", "task.guess_scale=0.8"])
    r = pb.run_optimization(iterations=200, progress=False, plots=False)
    assert r["status"] == "converged" and r["success"]        # L-BFGS's gradient criterion
    np.testing.assert_allclose(r["fitted_stiffness"], r["true_stiffness"], rtol=1e-5)


def test_resume_equals_uninterrupted_run(tmp_path):
    ov = ["sim.steps=40", "controller.hidden=4", "controller.sines=2"]
    a = diffsim.build("robot_a", ov)
    ra = a.run_optimization(iterations=5, out=tmp_path / "a", progress=False, plots=False)
    b = diffsim.build("robot_a", ov)
    b.run_optimization(iterations=2, out=tmp_path / "b", progress=False, plots=False)
    c = diffsim.build("robot_a", ov)
    rc = c.run_optimization(iterations=5, out=tmp_path / "b", resume=True, progress=False, plots=False)
    assert rc["iterations"] == 5
    np.testing.assert_allclose(rc["history"]["loss"], ra["history"]["loss"], rtol=1e-12)
    xa = json.loads((tmp_path / "a" / "checkpoint.json").read_text())["x"]
    xb = json.loads((tmp_path / "b" / "checkpoint.json").read_text())["x"]
    np.testing.assert_allclose(xa, xb, rtol=1e-12)


def test_cli_end_to_end(tmp_path, capsys):
    from diffsim.cli import main
    ov = ["--set", "sim.steps=30", "--set", "controller.hidden=4", "--set", "controller.sines=2"]
    assert main(["optimize", "robot_a", *ov, "--iterations", "2", "--json", "--no-plot",
                 "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["iterations"] == 2 and len(out["history"]["loss"]) == 2
    assert main(["grad", "spring_triangle", "--set", "sim.steps=50", "--json"]) == 0
    g = json.loads(capsys.readouterr().out)
    assert set(g["grad"]) == {"rest[0,0]", "rest[0,1]", "rest[0,2]"}
    assert main(["run", "spring_triangle", "--set", "sim.steps=50", "--json", "--out", str(tmp_path)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["masses"] == 3 and s["plots"]
    assert main(["run", str(tmp_path / "nope.toml")]) == 2


def test_stability_limit_is_the_explicit_steps_own_and_scenes_above_it_are_refused(tmp_path):
    """One spring k holding a mass m to a pinned one: the semi-implicit Euler step is stable
    for dt < 2·sqrt(m/k) and grows without bound above it (the step matrix's eigenvalue
    leaves the unit circle). bodies.stability_limit gives exactly that limit; a scene whose
    sim.dt exceeds it is refused naming sim.dt; every bundled scene is below it."""
    from diffsim.errors import SimulationError
    from diffsim.tasks.mass_spring import make_body
    k, m = 400.0, 0.25
    body = bodies.Body(x=[[0.0, 0.0], [1.1, 0.0]], mass=[1.0, m], springs=[[0, 1]], stiffness=k,
                       damping=0.0, rest=1.0, actuation=0.0, pinned=[True, False])
    dt_max, i = bodies.stability_limit(body)
    assert i == 1 and dt_max == pytest.approx(2 * np.sqrt(m / k), rel=1e-14)
    sims = {f: MassSpring(body, steps=400, dt=f * dt_max, gravity=0.0, ground=None) for f in (0.95, 1.05)}
    sims[0.95].forward("distance")
    x = sims[0.95].trajectory()[0, :, 1, 0] - 1.0
    assert np.abs(x).max() < 0.1 / np.sqrt(1 - 0.95 ** 2) and np.abs(x[-100:]).max() > 0.05
    with pytest.raises(SimulationError, match="blew up|too large"):
        sims[1.05].forward("distance")
    for name in ("spring_triangle", "robot_a", "robot_b", "robot_c", "robot_d", "cloth_drop"):
        sc = diffsim.scene.load(name)
        assert sc["sim"]["dt"] < 0.5 * bodies.stability_limit(make_body(sc))[0], name
    with pytest.raises(SceneError, match=r"sim\.dt.*stability limit.*0\.527 s"):
        diffsim.build("spring_triangle", ["sim.dt=0.6"])
