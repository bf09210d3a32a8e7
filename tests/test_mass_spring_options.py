"""Mass-spring: every documented option against central FD (float64), reproducibility,
input checks, sizes refused before allocation, identifiability report."""
import json

import numpy as np
import pytest

import diffsim
from diffsim.errors import DiffsimError, SceneError
from diffsim.systems import bodies
from diffsim.systems.mass_spring import MassSpring
from test_mass_spring import check as _check   # reverse mode vs central differences


def check(sim, objective, entries, rtol=1e-5, atol=1e-10):
    _check(sim, objective, entries, rtol, atol, nonzero=True)


def falling_square(vy=-0.8, act=0.15):
    """Four masses, five springs (two actuated), moving down towards a ground at 0."""
    x = [[0.0, 0.06], [0.1, 0.06], [0.0, 0.16], [0.1, 0.16]]
    springs = [[0, 1], [2, 3], [0, 2], [1, 3], [0, 3]]
    return bodies.Body(x=x, mass=[1.0, 1.2, 0.8, 1.0], springs=springs, stiffness=[300, 250, 320, 280, 200],
                       damping=[0.2, 0.1, 0.3, 0.2, 0.1], rest=[0.1, 0.1, 0.1, 0.1, 0.1414],
                       actuation=[act, 0, 0, act, 0], pinned=False,
                       v=[[0.4, vy], [0.3, vy], [0.4, vy], [0.35, vy]])


# (controller, objective, physics): together with tests/test_mass_spring.py every controller
# kind, objective, friction, restitution, sticky ground, spring and global damping is covered.
CASES = {
    "sequence-target-sticky": ("sequence", "target", dict(ground=0.0, sticky=True, damping=0.5)),
    "sine-area-restitution-friction": ("sine", "area", dict(ground=0.0, restitution=0.6, friction=0.4)),
    "neural-height-bounce": ("neural", "height", dict(ground=0.0, restitution=0.3, friction=0.2, damping=1.0)),
    "none-identify-free": ("none", "identify", dict(ground=None, damping=2.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_option_gradients_match_central_fd(case):
    ctrl, objective, phys = CASES[case]
    sim = MassSpring(falling_square(), steps=40, dt=0.004, gravity=-9.8, controller=ctrl,
                     hidden=3, sines=2, pieces=4, omega=9.0, **phys)
    sim.init_controller(2)
    sim.set_target(point=[0.3, 0.05], area=0.012)
    if objective == "identify":
        sim.set(stiffness=sim.get("stiffness") * 1.1)
        sim.forward("height")
        sim.set_observation(sim.trajectory()[0])
        sim.set(stiffness=sim.get("stiffness") / 1.1)
    sim.forward(objective)
    if phys.get("ground") is not None:
        y, vy = sim.trajectory()[0, :, :, 1], sim.velocities()[0, :, :, 1]
        rebound = (vy[:-1] < 0) & (vy[1:] > 0) & (y[1:] < 0.02)
        assert y.min() >= -1e-12 and ((y < 1e-9).any() or rebound.any())   # contact happened
    entries = [("stiffness", (0, 2), 1e-3), ("damping", (0, 1), 1e-6), ("rest", (0, 4), 1e-7),
               ("mass", (0, 1), 1e-7), ("vx0", (0, 0), 1e-7), ("y0", (0, 3), 1e-7),
               ("actuation", (0, 0), 1e-7)]
    if ctrl == "none":
        entries = entries[:-1]
    entries += {"sequence": [("seq", (0, 0, 0), 1e-7), ("seq", (0, 2, 1), 1e-7)],
                "sine": [("amp", (0, 1), 1e-7), ("phase", (0, 0), 1e-7)],
                "neural": [("w1", (0, 1, 3), 1e-6), ("b1", (0, 2), 1e-6), ("w2", (0, 1, 0), 1e-6),
                           ("b2", (0, 0), 1e-6)],
                "none": []}[ctrl]
    check(sim, objective, entries)


def test_gradients_exact_for_more_springs_than_the_autodiff_stack():
    # 34×34 cloth: 2,244 springs > runtime.AD_STACK_SIZE = 2048 iterations of the inner
    # spring loop; a loop-carried local would overflow the stack (silently wrong gradients).
    c = bodies.cloth(34, 1.0, 1.0, total_mass=1.0, stiffness=50.0, damping=0.1)
    assert c.n_springs > 2048
    sim = MassSpring(c, steps=6, dt=0.002, gravity=-9.81, ground=None)
    sim.set(stiffness=sim.get("stiffness") * 1.3)
    rng = np.random.default_rng(0)
    sim.set(vx0=rng.normal(size=c.n_masses), vy0=rng.normal(size=c.n_masses))
    sim.forward("height")
    sim.set_observation(sim.trajectory()[0])
    sim.set(stiffness=sim.get("stiffness") / 1.3)
    check(sim, "identify", [("stiffness", (0, 2200), 1e-2), ("stiffness", (0, 5), 1e-2),
                            ("vy0", (0, 600), 1e-6)], rtol=1e-6, atol=1e-16)


def test_same_scene_and_seed_give_identical_history():
    ov = ["sim.steps=40", "controller.hidden=4", "controller.sines=2"]   # as test_resume: shared compiles
    runs = [diffsim.build("robot_a", ov).run_optimization(iterations=4, progress=False, plots=False)
            for _ in range(2)]
    assert runs[0]["history"]["loss"] == runs[1]["history"]["loss"]            # bitwise
    assert runs[0]["history"]["grad_norm"] == runs[1]["history"]["grad_norm"]


def test_batch_gradients_identical_between_runs():
    sim = MassSpring(falling_square(), batch=3, steps=30, dt=0.004, gravity=-9.8, ground=0.0,
                     friction=0.3, controller="neural", hidden=4, sines=2)
    sim.init_controller(1)
    out = []
    for _ in range(3):
        f = sim.forward("distance")
        out.append((f, sim.backward()))
    for f, g in out[1:]:
        assert f == out[0][0]
        for n in g:
            assert np.array_equal(g[n], out[0][1][n]), n
    # the batch-parallel stages and the serialized batch sum differentiate correctly
    check(sim, "distance", [("w1", (1, 2, 5), 1e-6), ("stiffness", (2, 4), 1e-3), ("vy0", (0, 1), 1e-7)])


# -- input checks ----------------------------------------------------------------------
def _scene(tmp_path, masses, springs, extra=""):
    lines = ['kind = "mass_spring"', extra, "[task]", 'objective = "height"', "[optimize]", 'params = ["y0"]']
    for m in masses:
        lines.append("[[masses]]\n" + "\n".join(f"{k} = {v}" for k, v in m.items()))
    for s in springs:
        lines.append("[[springs]]\n" + "\n".join(f"{k} = {v}" for k, v in s.items()))
    p = tmp_path / "bad.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


TWO = [{"x": 0, "y": 0}, {"x": 1, "y": 0}]


@pytest.mark.parametrize("masses,springs,key", [
    ([{"x": 0, "y": 0, "pinned": '"false"'}], [], "masses[0].pinned"),
    ([{"x": 0, "y": 0, "pinned": 0}], [], "masses[0].pinned"),
    ([{"x": 0, "y": '"1"'}], [], "masses[0].y"),
    ([{"x": 0, "y": 0, "vx": "nan"}], [], "masses[0].vx"),
    (TWO, [{"a": 0, "b": 1, "stiffness": -1}], "springs[0].stiffness"),
    (TWO, [{"a": 0, "b": 1, "damping": -0.5}], "springs[0].damping"),
    (TWO, [{"a": 0, "b": 1, "actuation": 1.0}], "springs[0].actuation"),
    (TWO, [{"a": 0, "b": 1, "rest": '"0.1"'}], "springs[0].rest"),
    (TWO, [{"a": 0, "b": 1}, {"a": 1, "b": 1}], "springs[1].b"),
    (TWO, [{"a": 0, "b": 1.0}], "springs[0].b"),
])
def test_table_values_checked(tmp_path, masses, springs, key):
    with pytest.raises(SceneError) as e:
        diffsim.load(_scene(tmp_path, masses, springs))
    assert f"'{key}'" in str(e.value) and "bad.toml" in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("task.true_stiffness_scale=[]", "task.true_stiffness_scale"),
    ("task.true_stiffness_scale=[1.0, -0.5]", "task.true_stiffness_scale"),
    ("task.true_stiffness_scale=[0.0]", "task.true_stiffness_scale"),
    ("body.actuation=1.5", "body.actuation"),
])
def test_schema_ranges(override, key):
    with pytest.raises(SceneError) as e:
        diffsim.load("cloth_drop", [override])
    assert f"'{key}'" in str(e.value)


def test_zero_length_and_missing_springs_named(tmp_path):
    with pytest.raises(SceneError) as e:
        diffsim.load(_scene(tmp_path, [{"x": 0, "y": 0}, {"x": 0, "y": 0}], [{"a": 0, "b": 1, "rest": 0.1}]))
    assert "'springs[0]'" in str(e.value) and "masses 0 and 1" in str(e.value)
    p = _scene(tmp_path, TWO, [])
    for opt in ('["stiffness"]', '["controller"]'):
        with pytest.raises(SceneError) as e:
            diffsim.load(p, [f"optimize.params={opt}", 'controller.kind="sine"'])
        assert "'optimize.params'" in str(e.value)
    pb = diffsim.build(p)                   # no springs, optimising y0: a valid free fall
    assert len(pb.params) == 2 and np.isfinite(pb.objective())
    with pytest.raises(DiffsimError, match="spring 0 joins masses 0 and 1"):
        MassSpring(bodies.Body(x=[[0, 0], [0, 0]], mass=1.0, springs=[[0, 1]], stiffness=1.0, damping=0.0,
                               rest=0.1, actuation=0.0, pinned=False))


@pytest.mark.parametrize("override,key", [
    ("sim.steps=100000000", "sim.steps"),
    ("sim.batch=1000000", "sim.batch"),
    ("controller.hidden=5000000", "controller.hidden"),
])
def test_enormous_sizes_refused_before_allocation(override, key):
    with pytest.raises(DiffsimError) as e:
        diffsim.load("robot_a", [override])
    assert key in str(e.value) and e.value.exit_code == 2


def test_enormous_cloth_refused_naming_nx():
    with pytest.raises(DiffsimError) as e:
        diffsim.load("cloth_drop", ["body.nx=5000"])
    assert "body.nx" in str(e.value) and e.value.exit_code == 2


# -- identifiability -----------------------------------------------------------------------
def test_identifiability_report_and_jacobian_against_reverse_mode():
    pb = diffsim.build("cloth_drop", ["body.nx=3", "sim.steps=60"])
    sim = pb.sim
    # at the truth every stiffness is within 1 % and the data determine all of them
    x_true = pb.x0().copy()
    x_true[:] = pb.true_stiffness
    rep = pb.identifiability(x_true)
    S = pb.body.n_springs
    assert rep["within_1pct"] == S and rep["max_relative_error"] < 1e-12
    assert rep["rank"] == S and np.isfinite(rep["condition"])
    assert rep["singular_values"].shape == (S,) and np.all(np.diff(rep["singular_values"]) <= 0)
    # at the (wrong) guess: the FD trajectory Jacobian reproduces reverse mode's gradient,
    # d loss/dk = 2/(N (T+1)) Σ (x - observed)·dx/dk
    x = pb.x0()
    jac = pb.trajectory_jacobian(x)
    f, g = pb.value_and_grad(x)
    obs = np.stack([sim.obs_x.to_numpy(), sim.obs_y.to_numpy()], axis=-1)
    r = sim.trajectory()[0] - obs
    want = 2.0 / (sim.N * (sim.T + 1)) * np.einsum("tnc,tncs->s", r, jac)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-14)
    rep = pb.identifiability(x)
    assert rep["within_1pct"] < S                # the guess is off by the true scales
    text = pb.identifiability_text(rep)
    assert f"of {S} stiffnesses within 1 %" in text
    json.dumps(pb.summary(x)["identifiability"], default=lambda o: o.tolist())


def test_identifiability_flags_stiffnesses_the_data_cannot_see():
    # 2×2 cloth: spring 1 joins the two pinned top corners (it moves nothing), and the
    # bottom spring 0 stays at its rest length while the cloth falls straight down
    pb = diffsim.build("cloth_drop", ["body.nx=2", "sim.steps=30"])
    assert pb.body.springs[:2].tolist() == [[0, 1], [2, 3]]
    rep = pb.identifiability()
    assert rep["rank"] == pb.body.n_springs - 2
    rse = rep["relative_std_error"]
    assert np.isinf(rse[:2]).all() and np.isfinite(rse[2:]).all()
    assert {e["spring"] for e in rep["least_determined"][:2]} == {0, 1}
    assert rep["condition"] > 1e6


def test_unstable_step_refused_even_when_finite():
    from diffsim.errors import SimulationError
    b = bodies.Body(x=[[0.0, 0.0], [0.1, 0.0]], mass=1.0, springs=[[0, 1]], stiffness=1e6, damping=0.0,
                    rest=0.09, actuation=0.0, pinned=False)
    sim = MassSpring(b, steps=30, dt=0.01, gravity=0.0, ground=None)   # ω·dt = 10: explodes
    with pytest.raises(SimulationError, match="blew up"):
        sim.forward("shape")


def test_steps_per_launch_gives_identical_numbers():
    """Several steps per launch of the step kernel (long horizons' default) runs the same
    per-step loops in the same order as one step per launch: value, trajectory, reverse-
    and forward-mode derivatives agree bit for bit, remainder launches included (10 = 3·3 + 1)."""
    def run(k):
        sim = MassSpring(falling_square(), steps=10, dt=0.004, gravity=-9.8, controller="sine",
                         omega=9.0, ground=0.0, restitution=0.5, friction=0.3, steps_per_launch=k)
        sim.init_controller(2)
        val = sim.forward("height")
        grads = sim.backward()
        _, tangent = sim.forward_tangent("height", [("stiffness", (0, 2)), ("amp", (0, 1))])
        return val, sim.trajectory(), grads, tangent
    one, three = run(1), run(3)
    assert one[0] == three[0]
    np.testing.assert_array_equal(one[1], three[1])
    for name in one[2]:
        np.testing.assert_array_equal(one[2][name], three[2][name])
    np.testing.assert_array_equal(one[3], three[3])
    assert np.abs(one[2]["stiffness"]).max() > 0
    with pytest.raises(DiffsimError, match="steps_per_launch"):
        MassSpring(falling_square(), steps=10, steps_per_launch=0)
