"""Scene kind "mass_spring": bodies of point masses and springs, controllers, objectives.

Scene layout (TOML)::

    kind = "mass_spring"
    description = "..."
    [body]        generator = "robot" | "grid" | "cloth" | "triangle" | "tables"
                  robot = "A".."D", nx, ny, width, height, origin, total_mass,
                  stiffness, damping, actuation (overrides)
    [[masses]]    x, y, mass = 1, pinned = false, vx = 0, vy = 0     (generator "tables")
    [[springs]]   a, b, stiffness, damping, rest (default: initial distance), actuation
    [sim]         steps, dt [s], gravity [m/s², y up], ground [m], has_ground, friction,
                  restitution, sticky, damping [1/s], batch
    [controller]  kind = "none" | "neural" | "sine" | "sequence", hidden, sines, omega, pieces,
                  seed, scale
    [task]        objective = "distance" | "target" | "shape" | "area" | "identify" | "height",
                  optimize = parameter groups (e.g. ["controller"], ["stiffness"], ["rest"]),
                  target, target_shape_scale, area, true_stiffness_scale, guess_scale
    [optim]       method = "adam" | "gd" | "lbfgs", lr, iterations, clip, max_grad_norm
"""
import json
import math
import pathlib

import numpy as np

from .. import runtime
from ..errors import DiffsimError, GradientError, SceneError
from ..problem import Param, Parameters, Problem
from ..scene import REQUIRED, Key
from ..systems import bodies
from ..systems.mass_spring import MassSpring, OBJECTIVES

DESCRIPTION = "2D mass-spring bodies (robots, cloth) with controllers; locomotion, shape and identification"

_list_of_tables = lambda v: None if (isinstance(v, list) and all(isinstance(e, dict) for e in v)) \
    else "expected an array of tables ([[...]])"

SCHEMA = {
    "masses": Key("any", [], "point masses (generator = 'tables')", check=_list_of_tables),
    "springs": Key("any", [], "springs (generator = 'tables')", check=_list_of_tables),
    "body": {
        "generator": Key("str", "tables", "how the body is made",
                         choices=("tables", "robot", "grid", "cloth", "triangle")),
        "robot": Key("str", "A", "DiffTaichi robot", choices=("A", "B", "C", "D")),
        "nx": Key("int", 8, "grid/cloth masses per row", lo=2),
        "ny": Key("int", 8, "grid masses per column", lo=2),
        "width": Key("float", 1.0, "grid/cloth width [m]", lo=0, lo_open=True),
        "height": Key("float", 1.0, "grid height [m]", lo=0, lo_open=True),
        "origin": Key("floats", [0.0, 0.0], "grid lower-left corner; cloth top edge height = origin[1]", length=2),
        "total_mass": Key("float", 1.0, "grid/cloth total mass [kg]", lo=0, lo_open=True),
        "stiffness": Key("float", 0.0, "override every spring's stiffness [N/m] (0: keep)", lo=0),
        "damping": Key("float", 0.0, "damping along every spring [N·s/m] (generators)", lo=0),
        "actuation": Key("float", 0.0, "override actuation of actuated springs (0: keep)", lo=0),
        "diagonals": Key("bool", False, "grid: add diagonal springs"),
    },
    "sim": {
        "steps": Key("int", 682, "time steps", lo=1),
        "dt": Key("float", 0.004, "time step [s]", lo=0, lo_open=True),
        "gravity": Key("float", -4.8, "gravity [m/s², y up]"),
        "has_ground": Key("bool", True, "whether there is a ground"),
        "ground": Key("float", 0.1, "ground height [m]"),
        "friction": Key("float", 0.0, "Coulomb friction coefficient", lo=0),
        "restitution": Key("float", 0.0, "restitution of ground impacts", lo=0, hi=1),
        "sticky": Key("bool", False, "DiffTaichi's ground: tangential velocity stops on impact"),
        "damping": Key("float", 0.0, "global velocity damping [1/s]", lo=0),
        "batch": Key("int", 1, "bodies simulated together (controller variants)", lo=1),
    },
    "controller": {
        "kind": Key("str", "none", "controller", choices=("none", "neural", "sine", "sequence")),
        "hidden": Key("int", 32, "neural: hidden units", lo=1),
        "sines": Key("int", 10, "neural: sine clock inputs", lo=0),
        "omega": Key("float", 10.0, "clock frequency [rad/s]"),
        "pieces": Key("int", 8, "sequence: piecewise-constant pieces", lo=1),
        "seed": Key("int", 0, "random seed of the initial weights"),
        "scale": Key("float", 1.0, "initial weight scale", lo=0),
    },
    "task": {
        "objective": Key("str", "distance", "objective", choices=OBJECTIVES),
        "optimize": Key("any", ["controller"], "parameter groups to optimise: controller, stiffness, "
                        "damping, rest, actuation, mass, x0, y0, vx0, vy0"),
        "target": Key("floats", [1.0, 0.2], "target point [m] (objective target)", length=2),
        "target_shape_scale": Key("float", 1.2, "objective shape: target = initial shape scaled about its centre", lo=0),
        "area": Key("float", 0.1, "objective area: target area [m²]"),
        "true_stiffness_scale": Key("floats", [1.0], "identify: observed run uses stiffness × these (cycled per spring)"),
        "guess_scale": Key("float", 1.0, "identify: initial guess = scene stiffness × this", lo=0, lo_open=True),
    },
    "optim": {
        "method": Key("str", "adam", "optimiser", choices=("adam", "gd", "lbfgs")),
        "lr": Key("float", 0.01, "learning rate", lo=0, lo_open=True),
        "iterations": Key("int", 100, "iterations", lo=1),
        "clip": Key("float", 0.0, "gradient 2-norm clip (0: none)", lo=0),
        "max_grad_norm": Key("float", 1e12, "a larger gradient norm is an error (exploding)", lo=0, lo_open=True),
    },
}

GROUPS_CONTROLLER = {"neural": ("w1", "b1", "w2", "b2"), "sine": ("amp", "phase"),
                     "sequence": ("seq",), "none": ()}
_BOUNDS = {"amp": (-1.0, 1.0), "seq": (-1.0, 1.0), "stiffness": (0.0, math.inf),
           "damping": (0.0, math.inf), "rest": (1e-6, math.inf), "mass": (1e-9, math.inf)}


def make_body(sc) -> bodies.Body:
    b, path = sc["body"], sc.path
    gen = b["generator"]
    if gen == "tables":
        body = bodies.body_from_tables(sc["masses"], sc["springs"], path=path)
    elif gen == "robot":
        body = bodies.robot(b["robot"], stiffness=b["stiffness"] or None, actuation=b["actuation"] or None)
    elif gen == "grid":
        body = bodies.grid(b["nx"], b["ny"], b["width"], b["height"], tuple(b["origin"]),
                           total_mass=b["total_mass"], stiffness=b["stiffness"] or 1e4,
                           damping=b["damping"], diagonals=b["diagonals"])
    elif gen == "cloth":
        body = bodies.cloth(b["nx"], b["width"], b["origin"][1], total_mass=b["total_mass"],
                            stiffness=b["stiffness"] or 1e4, damping=b["damping"], diagonals=b["diagonals"])
    else:
        body = bodies.triangle()
        if b["stiffness"]:
            body.stiffness[:] = b["stiffness"]
    if gen != "tables" and (sc["masses"] or sc["springs"]):
        raise SceneError(f"[[masses]]/[[springs]] are only used with body.generator = 'tables', not {gen!r}",
                         file=path, key="body.generator", value=gen, has_value=True)
    return body


def check_scene(sc):
    make_body(sc)   # raises SceneError naming the bad entry
    opt = sc["task"]["optimize"]
    known = ("controller",) + tuple(n for n in ("stiffness", "damping", "rest", "actuation", "mass",
                                                 "x0", "y0", "vx0", "vy0"))
    if not (isinstance(opt, list) and opt and all(o in known for o in opt)):
        raise SceneError(f"must be a non-empty list of {', '.join(known)}", file=sc.path,
                         key="task.optimize", value=opt, has_value=True)
    if "controller" in opt and sc["controller"]["kind"] == "none":
        raise SceneError("optimises the controller but controller.kind = 'none'; pick neural, sine "
                         "or sequence, or optimise body parameters", file=sc.path, key="task.optimize",
                         value=opt, has_value=True)


def build(sc, **_):
    return MassSpringProblem(sc)


class MassSpringProblem(Problem):
    """A mass-spring scene as a Problem: the parameters are the flattened entries of the
    groups in ``task.optimize`` (batch axis first), e.g. ``w1[0,3,2]`` or ``stiffness[0,5]``."""

    methods = ("discrete", "fd")
    default_method = "discrete"

    def __init__(self, sc):
        self.scene, self.name = sc, sc.name
        s, c, t = sc["sim"], sc["controller"], sc["task"]
        self.body = make_body(sc)
        self.objective_kind = t["objective"]
        self.sim = MassSpring(self.body, batch=s["batch"], steps=s["steps"], dt=s["dt"],
                              gravity=s["gravity"], ground=s["ground"] if s["has_ground"] else None,
                              friction=s["friction"], restitution=s["restitution"], sticky=s["sticky"],
                              damping=s["damping"], controller=c["kind"], hidden=c["hidden"],
                              sines=c["sines"], omega=c["omega"], pieces=c["pieces"])
        self.sim.init_controller(c["seed"], c["scale"])
        self.seed = c["seed"]
        groups = []
        for o in t["optimize"]:
            groups += list(GROUPS_CONTROLLER[self.sim.controller]) if o == "controller" else [o]
        self.groups = groups
        self._setup_objective()
        self._make_params()
        self.fd_step = 1e-6

    # -- objective data ------------------------------------------------------------------
    def _setup_objective(self):
        t, sim, body = self.scene["task"], self.sim, self.body
        centre = body.x.mean(axis=0)
        sim.set_target(point=t["target"], shape=centre + t["target_shape_scale"] * (body.x - centre),
                       area=t["area"])
        self.true_stiffness = None
        if self.objective_kind == "identify":
            scale = np.resize(np.asarray(t["true_stiffness_scale"]), body.n_springs)
            self.true_stiffness = body.stiffness * scale
            sim.set(stiffness=self.true_stiffness)
            sim.forward("height")
            sim.set_observation(sim.trajectory()[0])
            sim.set(stiffness=body.stiffness * t["guess_scale"])

    def _make_params(self):
        items, self._slices = [], []
        start = 0
        for g in self.groups:
            vals = self.sim.get(g)
            lo, hi = _BOUNDS.get(g, (-math.inf, math.inf))
            for idx in np.ndindex(vals.shape):
                items.append(Param(f"{g}[{','.join(map(str, idx))}]", float(vals[idx]), lo, hi, True))
            self._slices.append((g, start, start + vals.size, vals.shape))
            start += vals.size
        self.params = Parameters(items)

    def _load(self, x):
        for g, a, b, shape in self._slices:
            self.sim.set(**{g: np.asarray(x[a:b]).reshape(shape)})

    # -- Problem -----------------------------------------------------------------------
    def _objective(self, x):
        self._load(x)
        return self.sim.forward(self.objective_kind)

    def _value_and_grad(self, x, method):
        self._load(x)
        f = self.sim.forward(self.objective_kind)
        g = self.sim.backward()
        return f, np.concatenate([g[name].ravel() for name, *_ in self._slices])

    def progress_info(self, x):
        tr = self.sim.trajectory()
        c = tr[:, -1].mean(axis=1)
        d = {"x_centre": f"{c[:, 0].mean():.4g}"}
        if self.objective_kind == "distance":
            d["dist"] = f"{(c[:, 0] - tr[:, 0].mean(axis=1)[:, 0]).mean():.4g}"
        return d

    def summary(self, x=None):
        f = self.objective(x)
        tr = self.sim.trajectory()
        c0, c1 = tr[:, 0].mean(axis=1), tr[:, -1].mean(axis=1)
        out = {"objective": f, "objective_kind": self.objective_kind, "masses": self.body.n_masses,
               "springs": self.body.n_springs, "actuated": int(len(self.body.actuated)),
               "steps": self.sim.T, "dt": self.sim.dt, "batch": self.sim.B,
               "centre_start": c0, "centre_end": c1, "distance": c1[:, 0] - c0[:, 0],
               "parameters": len(self.params)}
        if self.true_stiffness is not None:
            out["stiffness_error"] = float(np.abs(self.sim.get("stiffness")[0] - self.true_stiffness).max())
        return out

    def plot_run(self, out):
        from ..systems import mass_spring_plots as plots
        self.objective()
        return plots.animate(self, pathlib.Path(out) / f"{self.name}.gif")

    # -- optimisation with checkpoints ----------------------------------------------------
    def make_optimizer(self, method=None):
        from ..optim import LBFGS, Adam, GradientDescent
        o = self.scene["optim"]
        method = method or o["method"]
        clip = o["clip"] or None
        if method == "adam":
            return Adam(lr=o["lr"], clip=clip)
        if method == "gd":
            return GradientDescent(lr=o["lr"], normalize=True, clip=clip)
        if method == "lbfgs":
            return LBFGS()
        raise DiffsimError(f"optim.method={method!r} is not known; use adam, gd or lbfgs")

    def run_optimization(self, iterations=None, method=None, seed=None, resume=False, out=None,
                         progress=True, plots=True, optimizer=None):
        """Optimise ``task.optimize`` with the shared loop (:func:`diffsim.optim.minimize`):
        after each iteration ``out/checkpoint.json`` holds the next point, the optimiser
        state and the best point; ``resume=True`` continues from it. Gradient method
        ``method`` (default discrete); the optimiser is ``optim.method``; a gradient norm
        above ``optim.max_grad_norm`` stops the run as diverged, keeping the best point."""
        from ..optim import minimize
        from ..problem import checkpoint_path, optimization_report
        o = self.scene["optim"]
        if seed is not None and seed != self.seed:
            self.sim.init_controller(seed, self.scene["controller"]["scale"])
            self.seed = seed
            self._make_params()
        x_before = self.x0()
        r = minimize(self, optimizer or self.make_optimizer(), iterations=iterations or o["iterations"],
                     method=method, progress=progress, checkpoint=checkpoint_path(out),
                     resume=resume, max_grad_norm=o["max_grad_norm"])
        report = optimization_report(self, r)
        loss = r.history.loss
        report["initial_objective"] = loss[0] if loss else r.objective
        if self.true_stiffness is not None:
            report["true_stiffness"] = self.true_stiffness
            report["fitted_stiffness"] = self.sim.get("stiffness")[0]
        if plots and out is not None and loss:
            from ..systems import mass_spring_plots as plots_mod
            hist = {"loss": loss, "grad_norm": r.history.grad_norm}
            report["plots"] = [str(p) for p in plots_mod.training_plots(self, hist, out, x_before, r.x)]
        return report

    def report_text(self, r):
        lines = [f"{self.name}: objective {r['initial_objective']:.6g} -> {r['objective']:.6g} "
                 f"after {r['iterations']} iterations ({r['status']}: {r['message']})"]
        if r.get("plots"):
            lines.append("plots: " + ", ".join(r["plots"]))
        return "\n".join(lines)

    def summary_text(self, s):
        return (f"{self.name}: {s['masses']} masses, {s['springs']} springs ({s['actuated']} actuated), "
                f"{s['steps']} steps of {s['dt']} s; objective ({s['objective_kind']}) = {s['objective']:.6g}; "
                f"centre moved {np.round(s['distance'], 4).tolist()} m")
