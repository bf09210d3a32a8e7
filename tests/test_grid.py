"""The grid the registries span: every system × integrator × gradient method it offers,
each gradient against central differences in float64 (diffsim.gradcheck: a step ladder
per parameter; a continuous adjoint is held to its own discretisation-error estimate, the
other methods to 1e-6). The cells come from the registries, so a new integrator or
gradient method joins the grid without a new test.

Systems: the cannon (through two bounces, with drag) for each of its integrators; an ODE
(the damped pendulum, second order, so every solver applies) for each solver of the
registry; the mass-spring (one integrator, semi-implicit Euler)."""
import pytest

import diffsim
from diffsim.gradcheck import gradcheck
from diffsim.ode.solvers import SOLVERS
from diffsim.systems.projectile import INTEGRATORS
from diffsim.tasks.cannon import CannonProblem
from diffsim.tasks.mass_spring import MassSpringProblem
from diffsim.tasks.ode import ODEProblem

# every system's cells, in the order a reader would look for them
CELLS = (
    [("cannon_bounce", (f"sim.integrator='{i}'",), m)
     for i in INTEGRATORS for m in CannonProblem.methods if m != "fd"]
    + [("pendulum", (f"solve.solver='{s}'", "solve.t1=1.0", "observe.count=11"), m)
       for s in SOLVERS for m in ODEProblem.methods if m != "fd"]
    + [("spring_triangle", (), m) for m in MassSpringProblem.methods if m != "fd"]
)


def _id(cell):
    scene, over, method = cell
    return "-".join([scene] + [o.split("=")[1].strip("'") for o in over[:1]] + [method])


@pytest.mark.parametrize("cell", CELLS, ids=[_id(c) for c in CELLS])
def test_gradient_matches_central_differences(cell):
    scene, over, method = cell
    pb = diffsim.build(scene, list(over))
    report = gradcheck(pb, method=method)
    assert report.ok, f"{_id(cell)}\n{report.table()}"
    assert len(report.rows) >= 1 and max(abs(r.fd) for r in report.rows) > 0


def test_the_grid_covers_every_registered_integrator_and_method():
    """A test that cannot fail is a defect: the grid must really span the registries."""
    ids = {_id(c) for c in CELLS}
    for s in SOLVERS:
        assert f"pendulum-{s}-discrete" in ids
    for i in INTEGRATORS:
        assert {f"cannon_bounce-{i}-{m}" for m in ("discrete", "forward", "adjoint")} <= ids
    assert {"spring_triangle-discrete", "spring_triangle-forward"} <= ids
