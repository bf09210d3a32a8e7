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
                  target, target_shape_scale, area, true_stiffness_scale, guess_scale,
                  noise (identify: position noise [m] for the identifiability report)
    [optimize]    params = parameter groups (e.g. ["controller"], ["stiffness"], ["rest"]),
                  optimizer = "adam" | "gd" | "lbfgs", lr, iterations, clip, max_grad_norm
                  (the section every kind shares: diffsim.optim.optimize_schema)
"""
import json
import math
import pathlib

import numpy as np

from .. import runtime
from ..errors import DiffsimError, GradientError, SceneError
from ..optim import optimize_schema
from ..problem import Param, Parameters, Problem
from ..task import Task
from ..scene import REQUIRED, Key
from ..systems import bodies
from ..systems.mass_spring import (BODY_PARAMS, MAX_FIELD_ELEMENTS, OBJECTIVES, SPRING_PARAMS, MassSpring,
                                     field_bytes)

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
        "actuation": Key("float", 0.0, "override actuation of actuated springs (0: keep)", lo=0,
                         hi=1, hi_open=True),
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
        "seed": Key("int", 0, "random seed of the initial weights", lo=0),
        "scale": Key("float", 1.0, "initial weight scale", lo=0),
    },
    "task": {
        "objective": Key("str", "distance", "objective", choices=OBJECTIVES),
        "target": Key("floats", [1.0, 0.2], "target point [m] (objective target)", length=2),
        "target_shape_scale": Key("float", 1.2, "objective shape: target = initial shape scaled about its centre", lo=0),
        "area": Key("float", 0.1, "objective area: target area [m²]"),
        "true_stiffness_scale": Key("floats", [1.0], "identify: observed run uses stiffness × these (cycled per spring)",
                                    lo=0, lo_open=True, check=lambda v: None if v else "must not be empty"),
        "noise": Key("float", 1e-3, "identify: position noise [m] assumed for the standard errors "
                     "of the identifiability report", lo=0, lo_open=True),
        "guess_scale": Key("float", 1.0, "identify: initial guess = scene stiffness × this", lo=0, lo_open=True),
    },
    "optimize": optimize_schema(
        Key("any", ["controller"], "parameter groups to optimise: controller, stiffness, "
            "damping, rest, actuation, mass, x0, y0, vx0, vy0"),
        ("adam", "gd", "lbfgs"), optimizer="adam", iterations=100, lr=0.01, clip=0.0,
        max_grad_norm=1e12),
}

GROUPS_CONTROLLER = {"neural": ("w1", "b1", "w2", "b2"), "sine": ("amp", "phase"),
                     "sequence": ("seq",), "none": ()}
_BOUNDS = {"amp": (-1.0, 1.0), "seq": (-1.0, 1.0), "stiffness": (0.0, math.inf),
           "damping": (0.0, math.inf), "rest": (1e-6, math.inf), "mass": (1e-9, math.inf),
           "actuation": (-1.0, 1.0)}   # |a| <= 1 keeps the actuated rest length rest·(1 + a·u) >= 0


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


#: scene keys that size the fields, for naming the one to blame when memory is refused
_SIZE_KEYS = (("sim", "steps"), ("sim", "batch"), ("controller", "hidden"), ("controller", "sines"),
              ("controller", "pieces"), ("body", "nx"), ("body", "ny"))


def _counts(sc, sizes):
    """(masses, springs, actuated springs) the scene's body will have, computed from the
    scene without building it (a cloth of nx = 10⁶ must be refused before its lists exist)."""
    b = sc["body"]
    gen = b["generator"]
    if gen == "tables":
        springs = sc["springs"]
        act = sum(1 for e in springs if isinstance(e, dict) and e.get("actuation", 0) not in (0, 0.0))
        return len(sc["masses"]), len(springs), act
    if gen == "robot":      # small fixed bodies: build to count
        r = bodies.robot(b["robot"])
        return r.n_masses, r.n_springs, len(r.actuated)
    if gen == "triangle":
        return 3, 3, 0
    nx = sizes["body.nx"]
    ny = nx if gen == "cloth" else sizes["body.ny"]
    s = (nx - 1) * ny + nx * (ny - 1) + (2 * (nx - 1) * (ny - 1) if b["diagonals"] else 0)
    return nx * ny, s, 0


def _scene_bytes(sc, sizes):
    n, s, a = _counts(sc, sizes)
    c = sc["controller"]
    nbytes, elems = field_bytes(n, s, a, batch=sizes["sim.batch"], steps=sizes["sim.steps"],
                                controller=c["kind"], hidden=sizes["controller.hidden"],
                                sines=sizes["controller.sines"], pieces=sizes["controller.pieces"])
    # the body itself (numpy) and, for identify, the observed trajectory copy
    return nbytes + 64 * (n + s), elems


def check_sizes(sc):
    """Refuse (DiffsimError, exit 2) sizes whose fields would not fit, before anything is
    built; the key blamed is the one whose value, put back to its default, shrinks the
    estimate most (float64 bytes: an upper bound for f32 runs)."""
    sizes = {f"{s}.{k}": sc[s][k] for s, k in _SIZE_KEYS}
    nbytes, elems = _scene_bytes(sc, sizes)
    if nbytes <= runtime.memory_limit() and elems <= MAX_FIELD_ELEMENTS:
        return
    best, ratio = "sim.steps", 0.0
    for full in sizes:
        section, k = full.split(".")
        alt = dict(sizes, **{full: min(sizes[full], SCHEMA[section][k].default)})
        r = nbytes / max(_scene_bytes(sc, alt)[0], 1)
        if r > ratio:
            best, ratio = full, r
    what = "the mass-spring simulation's fields"
    if elems > MAX_FIELD_ELEMENTS:
        raise SceneError(f"{what} would need one field of {elems:,} entries; Taichi indexes fields with "
                         f"32-bit integers (at most {MAX_FIELD_ELEMENTS:,}); make it smaller",
                         file=sc.path, key=best, value=sizes[best], has_value=True)
    runtime.check_memory(nbytes, what=f"{sc.path}: {what}", key=best, value=sizes[best])


def check_scene(sc):
    check_sizes(sc)
    body = make_body(sc)   # raises SceneError naming the bad entry
    try:
        bodies.check_body(body)
    except DiffsimError as e:
        raise SceneError(str(e), file=sc.path, key="body") from None
    dt_max, i = bodies.stability_limit(body)
    if sc["sim"]["dt"] > dt_max:
        raise SceneError(f"is above the stability limit of the explicit step for these springs, "
                         f"{dt_max:.3g} s (2/ω for mass {i}, from its springs' stiffness and its "
                         f"mass): the motion would oscillate and grow without bound. Lower sim.dt "
                         f"(and raise sim.steps to keep the horizon), or soften the springs",
                         file=sc.path, key="sim.dt", value=sc["sim"]["dt"], has_value=True)
    opt = sc["optimize"]["params"]
    known = ("controller",) + BODY_PARAMS
    if not (isinstance(opt, list) and opt and all(o in known for o in opt)) or len(set(opt)) != len(opt):
        raise SceneError(f"must be a non-empty list of distinct names from {', '.join(known)}", file=sc.path,
                         key="optimize.params", value=opt, has_value=True)
    if "controller" in opt and sc["controller"]["kind"] == "none":
        raise SceneError("optimises the controller but controller.kind = 'none'; pick neural, sine "
                         "or sequence, or optimise body parameters", file=sc.path, key="optimize.params",
                         value=opt, has_value=True)
    if "controller" in opt and len(body.actuated) == 0:
        raise SceneError("optimises the controller but no spring is actuated (every actuation is 0), so "
                         "the controller has no outputs; give some springs an actuation", file=sc.path,
                         key="optimize.params", value=opt, has_value=True)
    spring_groups = [o for o in opt if o in SPRING_PARAMS]
    if spring_groups and body.n_springs == 0:
        raise SceneError(f"optimises {', '.join(spring_groups)} but the body has no springs ([[springs]] "
                         "is empty); add springs or optimise mass/initial-state groups", file=sc.path,
                         key="optimize.params", value=opt, has_value=True)
    if sc["task"]["objective"] == "identify" and body.n_springs == 0:
        raise SceneError("objective 'identify' fits spring stiffnesses, but the body has no springs",
                         file=sc.path, key="task.objective", value="identify", has_value=True)


def build(sc, **_):
    return MassSpringProblem(sc)


class MassSpringProblem(Task, Problem):
    """A mass-spring scene as a Problem: the parameters are the flattened entries of the
    groups in ``optimize.params`` (batch axis first), e.g. ``w1[0,3,2]`` or ``stiffness[0,5]``."""

    methods = ("discrete", "forward", "fd")
    default_method = "discrete"
    #: forward mode runs one tangent simulation per parameter: refused above this many
    #: (a robot's ~1,500 controller weights would cost ~1,500 simulations per gradient)
    max_forward_params = 256

    def __init__(self, sc):
        self.scene, self.name = sc, sc.name
        s, c, t = sc["sim"], sc["controller"], sc["task"]
        self.body = make_body(sc)
        self.objective_kind = t["objective"]
        self._sim_kw = dict(steps=s["steps"], dt=s["dt"],
                            gravity=s["gravity"], ground=s["ground"] if s["has_ground"] else None,
                            friction=s["friction"], restitution=s["restitution"], sticky=s["sticky"],
                            damping=s["damping"], controller=c["kind"], hidden=c["hidden"],
                            sines=c["sines"], omega=c["omega"], pieces=c["pieces"])
        self.sim = MassSpring(self.body, batch=s["batch"], **self._sim_kw)
        self._sens = None
        self.sim.init_controller(c["seed"], c["scale"])
        self.seed = c["seed"]
        groups = []
        for o in sc["optimize"]["params"]:
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
        if method == "forward":
            n = len(x)
            if n > self.max_forward_params:
                raise DiffsimError(
                    f"{self.name}: forward mode costs one tangent simulation per parameter, here "
                    f"{n} (optimize.params = {self.scene['optimize']['params']}), more than the "
                    f"{self.max_forward_params} it is offered for; use --method discrete (one "
                    "reverse pass gives every parameter) or optimise fewer parameters")
            entries = [(name, idx) for name, _, _, shape in self._slices for idx in np.ndindex(shape)]
            return self.sim.forward_tangent(self.objective_kind, entries)
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
            try:
                out["identifiability"] = self.identifiability(x)
            except DiffsimError as e:        # too large to compute: say so instead of failing
                out["identifiability"] = {"skipped": str(e)}
        return out

    # -- identifiability (objective "identify") --------------------------------------------
    def trajectory_jacobian(self, x=None, rel_step=1e-5, chunk=64):
        """d(observed positions)/d(stiffness) of batch entry 0 at ``x``: shape
        (steps + 1, N, 2, S) [m per N/m], by central differences of whole trajectories
        (step ``rel_step``·|k_j|), run in a second simulation whose batch entries carry the
        ±perturbations (``chunk`` entries per launch). Needs float64 to be meaningful."""
        x = self._as_x(x)
        self._load(x)
        S, sim = self.sim.S, self.sim
        if S == 0:
            raise DiffsimError("the body has no springs: there is no stiffness to identify")
        jac_bytes = 8 * (sim.T + 1) * sim.N * 2 * S
        budget = runtime.memory_limit() // 4
        if jac_bytes > budget:
            raise DiffsimError(f"the sensitivity of {sim.N} masses over {sim.T + 1} steps to {S} stiffnesses "
                               f"needs {jac_bytes / 2**30:.3g} GiB (more than a quarter of the memory diffsim "
                               "may use); identifiability is only computed for smaller scenes")
        pairs = max(1, min(S, chunk // 2))
        while pairs > 1 and field_bytes(sim.N, S, sim.A, batch=2 * pairs, steps=sim.T, controller=sim.controller,
                                        hidden=sim.H, sines=sim.NS, pieces=sim.P)[0] > budget:
            pairs //= 2
        if self._sens is None or self._sens.B != 2 * pairs:
            self._sens = MassSpring(self.body, batch=2 * pairs, **self._sim_kw)
        sens = self._sens
        for name in sim.param_names:
            sens.set(**{name: sim.get(name)[:1]})
        k = sim.get("stiffness")[0]
        h = rel_step * np.maximum(np.abs(k), 1e-12)
        jac = np.zeros((sim.T + 1, sim.N, 2, S))
        for start in range(0, S, pairs):
            idx = np.arange(start, min(start + pairs, S))
            kk = np.tile(k, (2 * pairs, 1))
            for r, j in enumerate(idx):
                kk[2 * r, j] += h[j]
                kk[2 * r + 1, j] -= h[j]
            sens.set(stiffness=kk)
            sens.forward("height")
            tr = sens.trajectory()
            for r, j in enumerate(idx):
                jac[..., j] = (tr[2 * r] - tr[2 * r + 1]) / (2 * h[j])
        return jac

    def identifiability(self, x=None, noise=None, rank_rtol=1e-6) -> dict:
        """How well the observed trajectory determines each spring stiffness (objective
        "identify", batch entry 0), at parameters ``x`` (default: current).

        With J = d(positions)/d(stiffness) (:meth:`trajectory_jacobian`, m = 2·N·(steps+1)
        rows) and independent position noise ``noise`` [m] per observed coordinate
        (default ``task.noise``), the least-squares covariance is noise²·(JᵀJ)⁻¹, so the
        standard error of k_j is noise·sqrt((JᵀJ)⁻¹_jj) [N/m]. Sensitivity is measured in
        relative terms, Jr = J·diag(k): ``singular_values`` are Jr's [m per unit relative
        change], ``rank`` counts those above ``rank_rtol``·largest, ``condition`` is
        largest/smallest of Jr (JᵀJ's is its square). The Gauss–Newton Hessian of the
        objective is 2/(N·(steps+1))·JᵀJ. Also reported: per-spring relative error against
        the true stiffness, how many are within 1 %, and how many have a relative standard
        error below 1 % (``determined_1pct``)."""
        if self.objective_kind != "identify":
            raise DiffsimError("identifiability() needs objective 'identify' (a true stiffness to compare)")
        noise = float(self.scene["task"]["noise"] if noise is None else noise)
        x = self._as_x(x)
        jac = self.trajectory_jacobian(x)
        k = self.sim.get("stiffness")[0]
        S = len(k)
        J = jac.reshape(-1, S)
        Jr = J * k
        # Eigen-decomposition of the S×S Gram matrix instead of an SVD of the tall Jr (32 s
        # vs 3 s for a 16×16 cloth); it resolves singular values down to ~1e-8 of the
        # largest, below rank_rtol's default.
        w, V = np.linalg.eigh(Jr.T @ Jr)
        w, V = w[::-1], V[:, ::-1]
        sv = np.sqrt(np.maximum(w, 0.0))
        rank = int(np.sum(sv > rank_rtol * sv[0])) if sv[0] > 0 else 0
        det = np.arange(S) < rank
        var_rel = (V[:, det] ** 2 / w[det]).sum(axis=1)                 # diag((JrᵀJr)⁺)
        # a stiffness with a visible share (not rounding) of an undetermined direction
        var_rel[(V[:, ~det] ** 2).sum(axis=1) > 1e-12] = np.inf
        Vt = V.T
        rel_se = noise * np.sqrt(var_rel)
        se = rel_se * np.abs(k)
        true = self.true_stiffness
        with np.errstate(divide="ignore", invalid="ignore"):   # a true stiffness of 0: error inf
            rel_err = np.where(true != 0, np.abs(k - true) / np.abs(np.where(true != 0, true, 1.0)),
                               np.where(k == true, 0.0, np.inf))
        worst = np.argsort(-rel_se)[:min(10, S)]
        weakest = Vt[-1]
        springs = self.body.springs
        return {
            "parameters": S,
            "observations": int(J.shape[0]),
            "relative_error": rel_err,
            "within_1pct": int(np.sum(rel_err <= 0.01)),
            "max_relative_error": float(rel_err.max()),
            "noise": noise,
            "std_error": se,
            "relative_std_error": rel_se,
            "determined_1pct": int(np.sum(rel_se <= 0.01)),
            "singular_values": sv,
            "rank": rank,
            "rank_rtol": rank_rtol,
            "condition": float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf,
            "least_determined": [{"spring": int(j), "masses": springs[j].tolist(),
                                  "relative_std_error": float(rel_se[j]),
                                  "relative_error": float(rel_err[j])} for j in worst],
            "weakest_direction": {int(j): float(weakest[j]) for j in np.argsort(-np.abs(weakest))[:5]},
            "method": "central differences of the trajectory (float64), eigenvalues of (J·diag(k))ᵀ(J·diag(k))",
        }

    @staticmethod
    def identifiability_text(d) -> str:
        """Lines for a user: how many stiffnesses the fit and the data determine."""
        if "skipped" in d:
            return f"identifiability: not computed ({d['skipped']})"
        n = d["parameters"]
        lines = [f"identifiability: {d['within_1pct']} of {n} stiffnesses within 1 % of the truth "
                 f"(worst {100 * d['max_relative_error']:.3g} %); sensitivity rank {d['rank']} of {n}, "
                 f"condition {d['condition']:.3g}; with {d['noise']:g} m position noise "
                 f"{d['determined_1pct']} of {n} would have a standard error below 1 %"]
        if d["determined_1pct"] < n:
            w = ", ".join(f"{e['spring']} (masses {e['masses'][0]}-{e['masses'][1]}: ±"
                          f"{100 * e['relative_std_error']:.3g} %)" for e in d["least_determined"][:5])
            lines.append(f"  least determined springs: {w}")
        return "\n".join(lines)

    def motion(self, x=None) -> dict:
        """Batch entry 0's motion at ``x`` (default: current), as
        :func:`diffsim.plots.mass_spring.animate` takes it: positions (steps + 1, N, 2)
        [m], springs (S, 2), actuation (steps, A) or None, actuator (S,) and ground [m]."""
        self.objective(x)
        sim = self.sim
        return {"positions": sim.trajectory()[0], "springs": sim.body.springs,
                "actuation": sim.actuations()[0] if sim.A else None,
                "actuator": sim.act_idx, "ground": sim.ground}

    def plot_run(self, out):
        """<scene>.gif (and .mp4 with ffmpeg): the body's motion at the current parameters."""
        from ..plots import mass_spring as plots
        return plots.animate(pathlib.Path(out) / f"{self.name}.gif", **self.motion(), title=self.name)

    def _training_plots(self, r, out, x_before):
        """loss.png (objective and gradient norm per iteration), stiffness.png (fitted vs
        true, objective "identify") and before/after animations (bodies of at most 400
        masses) of the optimisation result ``r``, written in ``out``."""
        from ..plots import common, mass_spring as plots
        out = pathlib.Path(out)
        files = [common.save(plots.loss_figure(r.history.loss, r.history.grad_norm), out, "loss.png")]
        if self.true_stiffness is not None:
            self._load(r.x)
            fig = plots.stiffness_figure(self.true_stiffness, self.sim.get("stiffness")[0])
            files.append(common.save(fig, out, "stiffness.png"))
        if self.body.n_masses <= 400:
            files += plots.animate(out / "before.gif", **self.motion(x_before), title="before")
            files += plots.animate(out / "after.gif", **self.motion(r.x), title="after")
            self.set(r.x)
        return files

    # -- optimisation with checkpoints ----------------------------------------------------
    def make_optimizer(self, name=None):
        """The optimiser ``name`` (default ``optimize.optimizer``) with the scene's lr/clip."""
        from ..optim import LBFGS, SECOND_ORDER, Adam, GradientDescent, make_optimizer
        o = self.scene["optimize"]
        name = name or o["optimizer"]
        clip = o["clip"] or None
        if name == "adam":
            return Adam(lr=o["lr"], clip=clip)
        if name == "gd":
            return GradientDescent(lr=o["lr"], normalize=True, clip=clip)
        if name == "lbfgs":
            return LBFGS()
        if name in SECOND_ORDER:
            return make_optimizer(name)
        raise DiffsimError(f"optimize.optimizer={name!r} is not known; use adam, gd, lbfgs, "
                           "newton or newton-cg")

    def run_optimization(self, iterations=None, method=None, seed=None, resume=False, out=None,
                         progress=True, plots=True, optimizer=None):
        """Optimise ``optimize.params`` with the shared loop (:func:`diffsim.optim.minimize`):
        after each iteration ``out/checkpoint.json`` holds the next point, the optimiser
        state and the best point; ``resume=True`` continues from it. Gradient method
        ``method`` (default discrete); the optimiser is ``optimize.optimizer``; a gradient norm
        above ``optimize.max_grad_norm`` stops the run as diverged, keeping the best point."""
        from ..optim import minimize
        from ..task import checkpoint_path, optimization_report
        o = self.scene["optimize"]
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
            try:
                report["identifiability"] = self.identifiability(r.x)
            except DiffsimError as e:
                report["identifiability"] = {"skipped": str(e)}
        if plots and out is not None and loss:
            report["plots"] = [str(p) for p in self._training_plots(r, out, x_before)]
        return report

    def report_text(self, r):
        lines = [f"{self.name}: objective {r['initial_objective']:.6g} -> {r['objective']:.6g} "
                 f"after {r['iterations']} iterations ({r['status']}: {r['message']})"]
        if self.objective_kind == "identify":
            # a small final objective does not mean every stiffness was found: say how many were
            d = r.get("identifiability")
            if d is None:
                try:
                    d = self.identifiability()
                except DiffsimError as e:
                    d = {"skipped": str(e)}
            lines.append(self.identifiability_text(d))
        if r.get("plots"):
            lines.append("plots: " + ", ".join(r["plots"]))
        return "\n".join(lines)

    def summary_text(self, s):
        extra = ("\n" + self.identifiability_text(s["identifiability"])) if s.get("identifiability") else ""
        return (f"{self.name}: {s['masses']} masses, {s['springs']} springs ({s['actuated']} actuated), "
                f"{s['steps']} steps of {s['dt']} s; objective ({s['objective_kind']}) = {s['objective']:.6g}; "
                f"centre moved {np.round(s['distance'], 4).tolist()} m{extra}")
