"""Cannon aiming: find launch parameters that land each cannonball on its target.

Scene kind ``cannon``. One cannon per target, all simulated in one batch; the objective
is Σ ½·miss² (m²) over targets, or a landing range / flight time. Gradients come from
Taichi's reverse mode through the projectile simulation (:mod:`diffsim.systems.projectile`).

Honesty about the physics. The landing point is that of the *discretised* flight. Every
summary and optimisation report also gives ``model_error`` [m] per cannon: the distance
between the landing at ``dt`` and at ``dt/2`` scaled by Richardson's 2^p/(2^p − 1)
(p = 4 for RK4, 3 with bounces; 1 for the Euler methods), an estimate of |simulated − exact| landing.
A target counts as hit only when miss + model_error < target.tolerance, so the hit holds
for the exact ODE too; when the model error alone is not below the tolerance the report
says so, success is false, and it names a dt that would do (dt is never changed behind
the user's back). Unreachable is claimed only when proved: the target lies outside the
interval of ranges that the free launch parameters (angle, speed) can reach, computed
by a golden-section scan of the arc; otherwise a miss is "not converged".
"""
from __future__ import annotations

import math

import numpy as np

from .. import runtime
from ..errors import DiffsimError
from ..optim import SECOND_ORDER, Adam, LBFGS, make_optimizer, minimize, optimize_schema
from ..problem import Param, Parameters, Problem
from ..task import Task
from ..scene import REQUIRED, Key
from ..ode.solvers import SOLVERS
from ..systems.projectile import INTEGRATORS, OBJECTIVES, RENAMED_INTEGRATORS, Projectile

#: order of accuracy of each integrator (global error ∝ dt^p), for Richardson estimates:
#: the solver registry's
ORDER = {name: SOLVERS[name].order for name in INTEGRATORS}
#: |gradient|·parameter scale above this many times (|objective| + 1) is reported as enormous
ENORMOUS_GRADIENT = 1e6

DESCRIPTION = "projectile under gravity, quadratic drag and wind; aim at targets"

LAUNCH_PARAMS = ("angle", "speed", "azimuth", "height")
PHYSICS_PARAMS = ("gravity", "drag", "wind_x", "wind_z", "restitution")
UNITS = {"angle": "rad", "speed": "m/s", "azimuth": "rad", "height": "m", "gravity": "m/s²",
         "drag": "1/m", "wind_x": "m/s", "wind_z": "m/s", "restitution": ""}
DEFAULT_BOUNDS = {"angle": (0.0, math.pi / 2), "speed": (1.0, 100.0),
                  "azimuth": (-math.pi, math.pi), "height": (0.0, 1e4),
                  "gravity": (0.0, 1e3), "drag": (0.0, 10.0), "wind_x": (-100.0, 100.0),
                  "wind_z": (-100.0, 100.0), "restitution": (0.0, 1.0)}
ALL_PARAMS = LAUNCH_PARAMS + PHYSICS_PARAMS
#: gradient methods offered (diffsim.gradients), the first the default
METHODS = ("discrete", "forward", "adjoint", "fd")


def _bounds_check(v):
    for name, b in v.items():
        if name not in ALL_PARAMS:
            return f"unknown parameter {name!r} in bounds; known: {', '.join(ALL_PARAMS)}"
        if not (isinstance(b, list) and len(b) == 2 and all(isinstance(x, (int, float)) for x in b)
                and all(math.isfinite(x) for x in b) and b[0] < b[1]):
            return f"bounds.{name} must be [low, high] with low < high"
    return None


def _params_check(v):
    bad = [p for p in v if p not in ALL_PARAMS]
    return f"unknown parameter(s) {bad}; known: {', '.join(ALL_PARAMS)}" if bad else None


SCHEMA = {
    "physics": {
        "gravity": Key("float", 9.81, "m/s², downward", lo=0.0, lo_open=True),
        "drag": Key("float", 0.0, "quadratic drag per unit mass k [1/m]: a = -k|v-w|(v-w)", lo=0.0),
        "wind": Key("floats", [0.0], "horizontal wind [m/s]: [wx] or [wx, wz]", length={1, 2}),
        "restitution": Key("float", 0.5, "vertical coefficient of restitution; 0: the first impact is the landing",
                           lo=0.0, hi=1.0),
        "bounces": Key("int", 0, "impacts that bounce before the landing", lo=0, hi=100),
    },
    "launch": {
        "speed": Key("float", 30.0, "m/s", lo=0.0, lo_open=True),
        "angle": Key("float", 0.6, "elevation above horizontal [rad]", lo=-math.pi / 2, hi=math.pi / 2),
        "azimuth": Key("float", 0.0, "from +x towards +z [rad] (3D)", lo=-math.pi, hi=math.pi),
        "height": Key("float", 0.0, "launch height [m]", lo=0.0),
    },
    "sim": {
        "dt": Key("float", 0.01, "time step [s]; the report's model_error says whether it is fine enough",
                  lo=0.0, lo_open=True, hi=10.0),
        "t_max": Key("float", 0.0, "longest flight simulated [s]; 0 = from the speed bound", lo=0.0),
        "integrator": Key("str", "rk4", "rk4 (4th order), midpoint (2nd) or semi_implicit_euler / euler (1st order)",
                          choices=INTEGRATORS, renamed=RENAMED_INTEGRATORS),
        "dims": Key("int", 2, "2 (x, y) or 3 (x, y, z)", choices=(2, 3)),
    },
    "target": {
        "x": Key("floats", [100.0], "target x per cannon [m]", length=None),
        "z": Key("floats", [], "target z per cannon [m] (3D; default 0)"),
        "arc": Key("str", "low", "which solution: low, high or any", choices=("low", "high", "any")),
        "tolerance": Key("float", 1e-3, "a target counts as hit when miss + model error is below this [m]",
                         lo=0.0, lo_open=True),
    },
    "objective": {
        "type": Key("str", "miss", choices=OBJECTIVES),
        "maximize": Key("bool", False, "negate the objective (e.g. maximise range)"),
    },
    # ½·miss² has gradients 10⁴× smaller near the target than far away: a long second-
    # moment memory (beta2 = 0.999) then shrinks Adam's steps to nothing before it arrives.
    "optimize": optimize_schema(
        Key("any", ["angle"], "parameters to optimise", check=lambda v: (
            "expected a list of parameter names" if not (isinstance(v, list) and all(isinstance(x, str) for x in v))
            else _params_check(v))),
        ("adam", "lbfgs"), optimizer="adam", iterations=300, lr=0.02, decay=0.98, beta2=0.9,
        methods=METHODS, seed=0, bounds=_bounds_check),
}


def check_scene(sc):
    t, d = sc["target"], sc["sim"]["dims"]
    if len(t["x"]) == 0:
        raise sc.error("needs at least one target", key="target.x", value=t["x"])
    if t["z"] and len(t["z"]) != len(t["x"]):
        raise sc.error(f"needs one entry per target ({len(t['x'])})", key="target.z", value=t["z"])
    if d == 2 and (any(t["z"]) or len(sc["physics"]["wind"]) == 2 and sc["physics"]["wind"][1] != 0):
        raise sc.error("z components need sim.dims = 3", key="sim.dims", value=d)
    for name in sc["optimize"]["params"]:
        lo, hi = sc["optimize"]["bounds"].get(name, DEFAULT_BOUNDS[name])
        if name in ("azimuth", "wind_z") and d == 2:
            raise sc.error(f"'{name}' exists only in 3D (sim.dims = 3)", key="optimize.params",
                           value=sc["optimize"]["params"])


class CannonProblem(Task, Problem):
    """Aim B cannons (one per target) by optimising their launch parameters.

    Parameters: per-cannon launch values (``angle``, ``speed``, … or ``angle[i]`` with
    several targets) and shared physics (``gravity``, ``drag``, ``wind_x``, …).
    Objective: Σ_b ½·|landing_b − target_b|² [m²] (or range / flight time).
    """

    name = "cannon"
    methods = METHODS

    def __init__(self, scene):
        self.scene = scene
        ph, la, sim, tg, opt = (scene[k] for k in ("physics", "launch", "sim", "target", "optimize"))
        self.dims = sim["dims"]
        self.targets_x = np.array(tg["x"], dtype=np.float64)
        self.targets_z = np.array(tg["z"] or [0.0] * len(tg["x"]), dtype=np.float64)
        self.B = len(self.targets_x)
        # Each target is a cannon with its own named parameters (Python objects, ~2 KiB
        # each with their arrays): refuse a huge list before building them, not after.
        runtime.check_memory(2048.0 * self.B, what=f"{self.B} targets (one cannon each)",
                             key="target.x", value=f"[{self.B} values]")
        self.tolerance = tg["tolerance"]
        self.objective_type, self.maximize = scene["objective"]["type"], scene["objective"]["maximize"]
        self.opt_cfg = opt
        bounds = {n: tuple(opt["bounds"].get(n, DEFAULT_BOUNDS[n])) for n in ALL_PARAMS}
        free = set(opt["params"])
        wind = list(ph["wind"]) + [0.0] * (2 - len(ph["wind"]))
        values = {"angle": la["angle"], "speed": la["speed"], "azimuth": la["azimuth"],
                  "height": la["height"], "gravity": ph["gravity"], "drag": ph["drag"],
                  "wind_x": wind[0], "wind_z": wind[1], "restitution": ph["restitution"]}
        for n in ALL_PARAMS:
            lo, hi = bounds[n]
            if n in free and not lo <= values[n] <= hi:
                raise scene.error(f"the start value {values[n]} of '{n}' is outside its bounds "
                                  f"[{lo}, {hi}]", key=f"optimize.bounds.{n}", value=[lo, hi])
        names = [n for n in LAUNCH_PARAMS if self.dims == 3 or n != "azimuth"]
        phys = [n for n in PHYSICS_PARAMS if self.dims == 3 or n != "wind_z"]
        plist = []
        self._launch_names = names
        for n in names:
            for b in range(self.B):
                pname = n if self.B == 1 else f"{n}[{b}]"
                plist.append(Param(pname, values[n], *bounds[n], optimize=n in free, unit=UNITS[n]))
        for n in phys:
            plist.append(Param(n, values[n], *bounds[n], optimize=n in free, unit=UNITS[n],
                               scale=1e-3 if n == "drag" else 1.0))
        self.params = Parameters(plist)
        self.bounces = ph["bounces"]
        self.dt = sim["dt"]
        self.integrator = sim["integrator"]
        vmax = bounds["speed"][1] if "speed" in free else la["speed"]
        hmax = bounds["height"][1] if "height" in free else la["height"]
        if sim["t_max"]:
            t_max, key, value = sim["t_max"], "sim.t_max", sim["t_max"]
        else:
            t_max = self._auto_t_max(vmax, ph["gravity"], hmax)
            if math.sqrt(2 * ph["gravity"] * hmax) > vmax:  # the fall from the height dominates
                key = "optimize.bounds.height" if "height" in free else "launch.height"
                value = hmax
            else:
                key = "optimize.bounds.speed" if "speed" in free else "launch.speed"
                value = vmax
        if t_max <= 1e5:   # a plausible flight: too many steps means the step is too small
            key, value = "sim.dt", self.dt
        nsteps = t_max / self.dt  # a float: 1e300 m/s must not reach math.ceil
        runtime.check_memory(Projectile.nbytes(self.B, min(nsteps, 1e300)) if math.isfinite(nsteps) else math.inf,
                             what=f"{self.B} cannon(s) over t_max/dt = {t_max:.3g} s / {self.dt:g} s "
                                  f"= {nsteps:.3g} steps", key=key, value=value)
        steps = max(1, math.ceil(nsteps))
        self.sim = Projectile(self.B, steps=steps, dt=self.dt, dims=self.dims,
                              integrator=self.integrator, bounces=self.bounces)
        self.sim.set_inputs(target_x=self.targets_x, target_z=self.targets_z)
        self._load(self.params.vector)
        self._arc_done = False

    def _auto_t_max(self, vmax, g, h):
        # Vacuum flight time at the highest speed, ×(bounces+1), with margin. Drag shortens
        # most flights; one that ends later is flagged (landed = False) and warned about.
        # hypot: a speed of 1e300 m/s gives a huge flight time, not an overflow
        t = (vmax + math.hypot(vmax, math.sqrt(2 * g * h))) / g
        return 1.2 * t * (self.bounces + 1) + 10 * self.dt

    # -- parameters -> simulator -----------------------------------------------------
    def _load(self, x):
        idx = 0
        vals = {}
        for n in self._launch_names:
            vals[n] = x[idx: idx + self.B]
            idx += self.B
        phys = [n for n in PHYSICS_PARAMS if self.dims == 3 or n != "wind_z"]
        for n in phys:
            vals[n] = x[idx]
            idx += 1
        self.sim.set_inputs(**vals)

    def _input_names(self):
        """The projectile inputs this problem's parameters map to (launch, then physics)."""
        return list(self._launch_names) + [n for n in PHYSICS_PARAMS if self.dims == 3 or n != "wind_z"]

    def _grad_vector(self, gin):
        out = []
        for n in self._launch_names:
            out.append(gin[n])
        for n in (n for n in PHYSICS_PARAMS if self.dims == 3 or n != "wind_z"):
            out.append([gin[n].sum()])
        return np.concatenate(out)

    def _objective(self, x):
        self._load(x)
        # not strict: a cannon still flying or coarsely resolved is reported by
        # summary()/warnings(), not raised in the middle of an optimisation
        return self.sim.forward(self.objective_type, self.maximize, strict=False)

    def _value_and_grad(self, x, method):
        f, g = self._grad_by(x, method)
        o = self.sim.outputs()
        # per-cannon ½·miss² of this evaluation, read once for converged/progress_info
        self._last_miss2 = 0.5 * ((o["land_x"] - self.targets_x) ** 2
                                  + (o["land_z"] - self.targets_z) ** 2)
        return f, g

    def _grad_by(self, x, method, factor=1):
        """(objective, gradient) by ``method`` with steps of dt/factor (factor > 1: forward
        and adjoint only, for step doubling)."""
        if method == "forward":
            # one tangent sweep per input row (cannons are independent: each sweep gives
            # every cannon's derivative), events differentiated as backward() does
            self._load(x)
            f, gin = self.sim.forward_tangent(self._input_names(), self.objective_type,
                                              self.maximize, factor=factor)
        elif method == "adjoint":
            if method.kind not in (None, "checkpointed"):
                raise DiffsimError(
                    f"Adjoint(kind={method.kind!r}) is not offered for {self.name}: the cannon's "
                    "adjoint integrates along the recorded forward states (memory O(steps)); "
                    "integrating the state backwards would have to locate every impact again "
                    "on a drifting backward state. Use Adjoint() (kind='checkpointed')")
            from ..systems.projectile_adjoint import continuous_adjoint
            self._load(x)
            f, gin = continuous_adjoint(self.sim, self.objective_type, self.maximize, factor=factor)
        else:
            f = self._objective(x)
            gin = self.sim.backward()
        return f, self._grad_vector(gin)

    def gradient_error(self, x, method):
        """Expected |g_method − exact gradient of the discretised objective| per parameter
        (absolute); None for the exact methods (discrete, forward).

        "adjoint": the continuous adjoint g_a approximates the exact ODE's gradient g_c,
        the discrete gradient g_d differs from g_c by its own discretisation error, so
        |g_a − g_d| ≤ |g_a − g_c| + |g_d − g_c|. Each term is estimated by step doubling of
        that method itself: e(dt) ≈ |g(dt) − g(dt/2)|·2^p/(2^p − 1), p the integrator's
        order (4 for RK4, 3 with bounces, 1 for the Euler methods; g_d at dt/2 by forward
        mode, which needs no autodiff stack). g_a − g_d itself is never used, so an adjoint
        wrong by more than its discretisation error fails the check. Returned: 2·(e_a + e_d)
        (a factor 2 for the asymptotic estimate), plus 1e-9 relative for round-off.
        Cost: two adjoints and two forward-mode gradients."""
        method = self.resolve_method(method)
        if method != "adjoint":
            return None
        x = self._as_x(x)
        p = self._order()
        rich = 2.0 ** p / (2.0 ** p - 1.0)
        est = np.zeros(len(x))
        scale = np.zeros(len(x))
        for m in (method, "forward"):
            g1 = self._grad_by(x, self.resolve_method(m))[1]
            g2 = self._grad_by(x, self.resolve_method(m), factor=2)[1]
            est += rich * np.abs(g1 - g2)
            scale = np.maximum(scale, np.abs(g1))
        self._objective(x)   # leave the simulator at dt, as every other call does
        return 2.0 * est + 1e-9 * scale

    # -- outputs -----------------------------------------------------------------------
    def landing(self, x=None, model_error=False):
        """Per-cannon landing x, z [m], flight time [s], miss [m] and landed flags; with
        ``model_error`` also the estimated |simulated − exact| landing distance [m]."""
        x = self._as_x(x)
        self._objective(x)
        o = self.sim.outputs()
        o["miss"] = np.hypot(o["land_x"] - self.targets_x, o["land_z"] - self.targets_z)
        if model_error:
            o["model_error"] = self.model_error(x, o)
        return o

    def model_error(self, x=None, coarse=None):
        """Estimated error [m] of each cannon's landing point against the exact solution
        of the same ODE: |landing(dt) − landing(dt/2)|·2^p/(2^p − 1) (step doubling with
        Richardson's factor, p the integrator's order). Array (B,)."""
        x = self._as_x(x)
        if coarse is None:
            self._objective(x)
            coarse = self.sim.outputs()
        fine = self.sim.refined_outputs(2)
        p = self._order()
        d = np.hypot(coarse["land_x"] - fine["land_x"], coarse["land_z"] - fine["land_z"])
        return d * 2 ** p / (2 ** p - 1)

    def warnings(self, x=None, model_error=True) -> list[str]:
        """Sentences about results at ``x`` that should not be trusted as they stand:
        cannons still flying at t_max, arcs resolved by too few steps, model error above
        the tolerance, enormous gradients. Empty when there is nothing to say."""
        from ..systems.projectile import MIN_STEPS_PER_ARC
        x = self._as_x(x)
        out = []
        f, g = self.value_and_grad(x)
        o = self.sim.outputs()
        flying = np.nonzero(~o["landed"])[0]
        if flying.size:
            out.append(f"cannon(s) {', '.join(map(str, flying))} still flying at t_max = "
                       f"{self.sim.steps * self.dt:.4g} s: the landing reported is the mid-air "
                       "position there, and so are its gradients; raise sim.t_max")
        coarse = np.nonzero(o["landed"] & (o["steps_per_arc"] < MIN_STEPS_PER_ARC))[0]
        if coarse.size:
            out.append(f"cannon(s) {', '.join(map(str, coarse))} land within fewer than "
                       f"{MIN_STEPS_PER_ARC} steps per arc (dt = {self.dt:g} s): too coarse to "
                       "trust; lower sim.dt")
        err = self.model_error(x, o) if model_error else np.zeros(self.B)
        if np.any(err >= self.tolerance):
            i = int(np.argmax(err))
            out.append(f"model error ≈ {err[i]:.3g} m (cannon {i}) is not below target.tolerance = "
                       f"{self.tolerance:g} m: {self._dt_hint(err)}")
        scale = np.maximum(np.abs(x), [p.scale for p in self.params.items])
        big = np.abs(g) * scale > ENORMOUS_GRADIENT * (abs(f) + 1.0)
        if big.any():
            out.append("enormous gradient(s) " + ", ".join(
                f"d/d {self.params.names[i]} = {g[i]:.3g}" for i in np.nonzero(big)[0])
                + ": the objective changes by more than 10⁶× itself for a relative parameter "
                "change of 1 (a grazing impact or a landing at the horizon); a step along it "
                "is not to be trusted")
        return out

    def _order(self):
        # The impact velocity that starts a bounce is the Hermite cubic's derivative,
        # third order: a bounced landing converges at most like dt³ even with RK4.
        p = ORDER[self.integrator]
        return min(p, 3) if self.bounces else p

    def _dt_hint(self, err):
        p = self._order()
        worst = float(np.max(err))
        dt = self.dt * (0.1 * self.tolerance / worst) ** (1 / p) if worst > 0 else self.dt
        extra = "" if self.integrator == "rk4" else " or sim.integrator = 'rk4'"
        return f"lower sim.dt to about {dt:.2g} s{extra}"

    def converged(self, x, f):
        if self.objective_type != "miss" or self.maximize:
            return False
        return bool(np.all(np.sqrt(2 * self._last_miss2) < self.tolerance))

    def progress_info(self, x):
        if self.objective_type != "miss":
            return {}
        return {"max miss [m]": f"{np.sqrt(2 * self._last_miss2).max():.3g}"}

    def summary(self, x=None):
        """Landing, miss and model error [m] per cannon at ``x``, and ``warnings``."""
        x = self._as_x(x)
        o = self.landing(x, model_error=True)
        d = {"objective": self.objective(x), "params": self.params.as_dict(x),
             "landing_x": o["land_x"], "landing_z": o["land_z"], "flight_time": o["land_t"],
             "landed": o["landed"], "targets_x": self.targets_x, "miss": o["miss"],
             "model_error": o["model_error"], "dt": self.dt, "integrator": self.integrator,
             "warnings": self.warnings(x)}
        if self.dims == 2:
            d.pop("landing_z")
        return d

    def summary_text(self, s):
        lines = [f"objective = {s['objective']:.10g}   ({self.integrator}, dt = {self.dt:g} s)"]
        for i in range(self.B):
            where = "lands" if s["landed"][i] else "is STILL FLYING"
            lines.append(f"  cannon {i}: {where} at x = {s['landing_x'][i]:.6g} m after "
                         f"{s['flight_time'][i]:.4g} s; target {self.targets_x[i]:.6g} m, "
                         f"miss {s['miss'][i]:.4g} m, model error ≈ {s['model_error'][i]:.2g} m")
        for w in s.get("warnings", []):
            lines.append("warning: " + w)
        return "\n".join(lines)

    def trajectories(self, x=None):
        """Positions (steps + 1, B, 3) [m] at ``x``, trimmed after the last landing."""
        self._load(self._as_x(x))
        tr = self.sim.trace()
        moving = np.any(np.abs(np.diff(tr, axis=0)) > 0, axis=(1, 2))
        last = int(np.nonzero(moving)[0].max()) + 2 if moving.any() else 1
        return tr[:last]

    # -- arcs and reachability -----------------------------------------------------------
    def max_range_angle(self, speed, iterations=48):
        """Elevation [rad] that maximises each cannon's landing distance at ``speed``
        [m/s] (array (B,)), and that distance [m]. Golden-section search on the range,
        all cannons at once on this problem's own simulator (no extra compile)."""
        self._load(self.params.vector)
        saved = self.sim.get_inputs()
        x0, z0 = saved["x0"], saved["z0"]

        def rng(angle):
            self.sim.set_inputs(angle=angle, speed=speed)
            self.sim.forward("range", strict=False)
            o = self.sim.outputs()
            return np.hypot(o["land_x"] - x0, o["land_z"] - z0)

        invphi = (math.sqrt(5) - 1) / 2
        a, b = np.full(self.B, 0.01), np.full(self.B, math.pi / 2 - 0.01)
        c, d = b - invphi * (b - a), a + invphi * (b - a)
        fc, fd = rng(c), rng(d)
        for _ in range(iterations):
            left = fc > fd  # the maximum lies in [a, d]: drop (d, b]; else drop [a, c)
            kept_f = np.where(left, fc, fd)
            a, b, c_old, d_old = np.where(left, a, c), np.where(left, d, b), c, d
            c = np.where(left, b - invphi * (b - a), d_old)
            d = np.where(left, c_old, a + invphi * (b - a))
            fnew = rng(np.where(left, c, d))
            fc, fd = np.where(left, fnew, kept_f), np.where(left, kept_f, fnew)
        best = 0.5 * (a + b)
        r = rng(best)
        self.sim.set_inputs(**saved)
        return best, r

    def _pname(self, n, b):
        return n if self.B == 1 else f"{n}[{b}]"

    def _prepare_arcs(self):
        """Restrict each elevation to the low or high branch (split at the angle of
        maximum range) and start from the vacuum solution clipped into that branch."""
        if self._arc_done or "angle" not in self.opt_cfg["params"]:
            return
        self._arc_done = True
        arc = self.scene["target"]["arc"]
        speed_free = "speed" in self.opt_cfg["params"]
        sp = np.array([getattr(self.params[self._pname("speed", b)], "upper" if speed_free else "value")
                       for b in range(self.B)])
        a_star, self.max_range = self.max_range_angle(sp)
        g = self.params["gravity"].value
        x0 = self.sim.get_inputs()["x0"]
        for b in range(self.B):
            p = self.params[self._pname("angle", b)]
            d = math.hypot(self.targets_x[b] - x0[b], self.targets_z[b])
            v = self.params[self._pname("speed", b)].value
            low = 0.5 * math.asin(min(1.0, g * d / (v * v)))
            if arc == "low":
                p.upper = min(p.upper, a_star[b])
                guess = min(low, 0.9 * a_star[b])
            elif arc == "high":
                p.lower = max(p.lower, a_star[b])
                guess = max(math.pi / 2 - low, a_star[b] + 0.1 * (math.pi / 2 - a_star[b]))
            else:
                continue
            p.value = float(np.clip(guess, p.lower, p.upper))

    # -- optimisation ------------------------------------------------------------------
    def make_optimizer(self, name=None):
        cfg = self.opt_cfg
        name = name or cfg["optimizer"]
        if name == "lbfgs":
            return LBFGS()
        if name in SECOND_ORDER:
            return make_optimizer(name)
        return Adam(lr=cfg["lr"], decay=cfg["decay"], beta2=cfg["beta2"])

    def aim(self, iterations=None, optimizer=None, method=None, progress=False, callback=None,
            checkpoint=None, resume=False):
        """Optimise the scene's parameters; returns (OptimizeResult, report dict).

        The report gives per target the miss and model error [m]; ``hit`` when miss +
        model error < tolerance. A target not hit is ``reachable = False`` (status
        "unreachable") only when proved outside the reachable landing interval
        (``min_range``, ``max_range``); otherwise the message says the optimiser did not
        converge within its iterations (status stays e.g. "max_iterations"), or that the
        model error is too large for the tolerance (status
        "model_error_above_tolerance"), and what to change. checkpoint/resume: as in
        :func:`diffsim.optim.minimize`.
        """
        self._prepare_arcs()
        n_iter = iterations or self.opt_cfg["iterations"]
        res = minimize(self, self.make_optimizer(optimizer), iterations=n_iter,
                       method=method or self.opt_cfg["method"], progress=progress, callback=callback,
                       checkpoint=checkpoint, resume=resume)
        o = self.landing(res.x, model_error=True)
        err = o["model_error"]
        hit = o["miss"] + err < self.tolerance
        report = {"params": self.params.as_dict(res.x), "objective": res.objective,
                  "miss": o["miss"], "model_error": err, "hit": hit, "reachable": hit.copy(),
                  "landing_x": o["land_x"], "flight_time": o["land_t"], "landed": o["landed"],
                  "targets_x": self.targets_x, "iterations": res.iterations,
                  "status": res.status, "message": res.message, "seconds": res.seconds,
                  "dt": self.dt, "history": {"loss": res.history.loss,
                                             "grad_norm": res.history.grad_norm},
                  "integrator": self.integrator}
        if self.objective_type == "miss" and not self.maximize:
            report["success"] = bool(hit.all()) and res.status not in ("interrupted", "diverged")
            if hasattr(self, "max_range"):
                report["max_range"] = self.max_range
            if not hit.all():
                report.update(self._explain_misses(res, o, n_iter))
                # why the optimiser stopped (e.g. a resumed, finished run), then why that
                # leaves targets unhit
                report["message"] = f"{res.message}; {report['message']}"
        else:
            report["success"] = res.success
        # the model error is in the report per target already
        report["warnings"] = self.warnings(res.x, model_error=False)
        self._load(res.x)
        return res, report

    def _reach_interval(self):
        """[lowest, highest] signed landing distance [m] per cannon that the free launch
        parameters can reach, or None where it is not established here. Established for
        2D with only the angle free, or angle and speed without a head wind (then the
        range grows with speed, so its extremes are at the speed bounds). The range is
        unimodal in the elevation: its maximum is at the golden-section angle a*, its
        minimum at an angle bound; a grid of 65 angles backs both up."""
        free = set(self.opt_cfg["params"])
        if self.dims != 2 or not free or not free <= {"angle", "speed"}:
            return None
        saved = self.sim.get_inputs()
        if "speed" in free and np.any(saved["wind_x"] < 0):
            return None
        x0 = saved["x0"]
        landed = [True]

        def rng(angle, speed):
            self.sim.set_inputs(angle=angle, speed=speed)
            self.sim.forward("range", strict=False)
            o = self.sim.outputs()
            landed[0] &= bool(o["landed"].all())
            return o["land_x"] - x0

        def bounds(n):
            ps = [self.params[self._pname(n, b)] for b in range(self.B)]
            if n in free:
                return np.array([p.lower for p in ps]), np.array([p.upper for p in ps])
            v = np.array([p.value for p in ps])
            return v, v

        (a_lo, a_hi), (v_lo, v_hi) = bounds("angle"), bounds("speed")
        a_star, _ = self.max_range_angle(v_hi)
        lo = np.minimum(rng(a_lo, v_lo), rng(a_hi, v_lo))
        hi = np.maximum(rng(np.clip(a_star, a_lo, a_hi), v_hi),
                        np.maximum(rng(a_lo, v_hi), rng(a_hi, v_hi)))
        for t in np.linspace(0, 1, 65)[1:-1]:
            a = a_lo + t * (a_hi - a_lo)
            lo = np.minimum(lo, rng(a, v_lo))
            hi = np.maximum(hi, rng(a, v_hi))
        self.sim.set_inputs(**saved)
        return (lo, hi) if landed[0] else None

    def _explain_misses(self, res, o, n_iter):
        """Message, status and per-target ``reachable`` for targets not hit: unreachable
        only when proved (outside the reach interval), else why it was not hit."""
        miss, err, tol = o["miss"], o["model_error"], self.tolerance
        reach = self._reach_interval()
        d = self.targets_x - self.sim.get_inputs()["x0"]
        reachable = np.ones(self.B, dtype=bool)
        parts, not_conv, model = [], [], []
        for i in np.nonzero(~(miss + err < tol))[0]:
            margin = tol + err[i]
            if reach is not None and not (reach[0][i] - margin <= d[i] <= reach[1][i] + margin):
                reachable[i] = False
                parts.append(f"target {i} at {self.targets_x[i]:.6g} m is unreachable within the "
                             f"parameter bounds: the reachable landings are "
                             f"[{reach[0][i]:.6g}, {reach[1][i]:.6g}] m from the launch point "
                             f"(closest miss {miss[i]:.4g} m)")
            elif miss[i] < tol:
                model.append(i)
            else:
                not_conv.append(i)
        if model:
            parts.append("target(s) " + ", ".join(map(str, model)) + " hit by the simulation "
                         f"(miss below {tol:g} m) but its model error ≈ "
                         + ", ".join(f"{err[i]:.3g}" for i in model)
                         + f" m leaves the true landing possibly outside the tolerance; {self._dt_hint(err[model])}")
        if not_conv:
            why = ("" if reach is None else " although it is within reach")
            parts.append("target(s) " + ", ".join(
                f"{i} at {self.targets_x[i]:.6g} m (miss {miss[i]:.4g} m)" for i in not_conv)
                + f" not hit after {res.iterations} iterations{why} (optimizer status "
                f"{res.status}); raise optimize.iterations (now {n_iter}) or use "
                "optimize.optimizer = 'lbfgs'"
                + ("" if reach is not None else
                   "; whether it is reachable was not determined (it is for 2D scenes "
                   "optimising the angle, or angle and speed without a head wind)"))
        out = {"message": "; ".join(parts), "reachable": reachable}
        if reach is not None:
            out["min_range"], out["max_range"] = reach
        # the optimiser's own status stays when it explains the miss (out of iterations,
        # interrupted); otherwise the status names the reason
        if res.status != "interrupted" and not not_conv:
            out["status"] = "model_error_above_tolerance" if model else "unreachable"
        return out

    def run_optimization(self, iterations=None, method=None, seed=None, resume=False,
                         out=None, progress=True, plots=True):
        from ..task import checkpoint_path
        snapshots = []
        every = max(1, (iterations or self.opt_cfg["iterations"]) // 12)

        def cb(it, x, f, g):
            if plots and (it % every == 0):
                snapshots.append((it, self.trajectories(x)))
            return False

        res, report = self.aim(iterations=iterations, method=method, progress=progress, callback=cb,
                               checkpoint=checkpoint_path(out), resume=resume)
        if plots and out is not None:
            snapshots.append((res.iterations, self.trajectories(res.x)))
            report["plots"] = [str(p) for p in self._optimization_plots(res, snapshots, out)]
        return report

    def report_text(self, r):
        lines = [f"status: {r['status']} after {r['iterations']} iterations ({r['seconds']:.2f} s)",
                 "parameters:", "\n".join(f"  {k} = {v:.10g}" for k, v in r["params"].items())]
        if "miss" in r:
            for i in range(self.B):
                word = ("hit" if r["hit"][i] else "NOT HIT" if r["reachable"][i] else "UNREACHABLE")
                lines.append(f"  target {i} at {self.targets_x[i]:.6g} m: lands at "
                             f"{r['landing_x'][i]:.6g} m, miss {r['miss'][i]:.3g} m, model error "
                             f"≈ {r['model_error'][i]:.2g} m ({word})")
        if r.get("message") and r.get("status") != "converged":
            lines.append(r["message"])
        for w in r.get("warnings", []):
            lines.append("warning: " + w)
        if r.get("plots"):
            lines.append("plots: " + ", ".join(r["plots"]))
        return "\n".join(lines)

    def plot_run(self, out):
        """trajectory.png: the flight at the current parameters."""
        from ..plots import cannon as plots, common
        fig = plots.trajectories_figure([(0, self.trajectories())], self.targets_x, title="trajectory")
        return [common.save(fig, out, "trajectory.png")]

    # -- figures of an optimisation ------------------------------------------------------
    def _cannon_objective(self, f, cannon):
        """Cannon ``cannon``'s own share of the objective just evaluated (½·miss² for the
        miss objective of a batch; the objective ``f`` otherwise)."""
        if self.objective_type == "miss" and not self.maximize and self.B > 1:
            return float(self._last_miss2[cannon])
        return f

    def landscape_1d(self, i, span, n=61, cannon=0):
        """Objective of cannon ``cannon`` and its derivative along parameter index ``i``
        over ``n`` values in ``span`` = (low, high), the other parameters at their current
        values: arrays (t, f, df/dt), each (n,). Gradients by the default method."""
        x0 = self.x0()
        T = np.linspace(span[0], span[1], n)
        F, G = np.zeros(n), np.zeros(n)
        for j, t in enumerate(T):
            x = x0.copy()
            x[i] = t
            f, g = self.value_and_grad(x)
            F[j], G[j] = self._cannon_objective(f, cannon), g[i]
        return T, F, G

    def landscape_2d(self, ia, ib, a_span, b_span, n=25, cannon=0):
        """Objective of cannon ``cannon`` on an n × n grid over parameter indices ``ia``
        (values a, (n,)) and ``ib`` (values b, (n,)), the others at their current values:
        (a, b, f, df/da, df/db) with the last three of shape (n, n) indexed [b, a]."""
        x0 = self.x0()
        A, V = np.linspace(*a_span, n), np.linspace(*b_span, n)
        Z, GA, GV = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        for i, v in enumerate(V):
            for j, a in enumerate(A):
                x = x0.copy()
                x[ia], x[ib] = a, v
                f, g = self.value_and_grad(x)
                Z[i, j], GA[i, j], GV[i, j] = self._cannon_objective(f, cannon), g[ia], g[ib]
        return A, V, Z, GA, GV

    def _optimization_plots(self, res, snapshots, out):
        """trajectories.png (a handful of iterations, evenly spaced), loss.png and, in 2D,
        landscape.png along the optimised launch parameter(s) of cannon 0: a 1-D curve with
        gradient tangents when one is optimised, a 2-D field for two or more."""
        from ..plots import cannon as plots, common
        path = res.history.x
        if path is not None and len(path) > 1:
            picks = common.pick(len(path), 6)
            snapshots = [(j, self.trajectories(path[j])) for j in picks]
            if picks[-1] != res.iterations:
                snapshots.append((res.iterations, self.trajectories(res.x)))
        ylabel = "½·miss² [m²]" if self.objective_type == "miss" else "objective"
        files = [common.save(plots.trajectories_figure(snapshots, self.targets_x), out, "trajectories.png"),
                 common.save(common.loss_figure(res.history.loss, ylabel), out, "loss.png")]
        names = self.params.names
        free = [n for n in self.opt_cfg["params"] if n in ("angle", "speed", "height", "azimuth")]
        free_all = list(self.opt_cfg["params"])
        if self.dims == 2 and free_all:
            x_best = res.x.copy()
            cols = [names.index(n if self.B == 1 or n not in self._launch_names else f"{n}[0]")
                    for n in (free + [n for n in free_all if n not in free])]
            P = np.asarray(path) if path is not None and len(path) else x_best[None]

            def span(i):
                p = self.params.items[i]
                return min(p.lower, P[:, i].min()), max(p.upper, P[:, i].max())

            def label(i):
                return common.axis_label(names[i], self.params.items[i].unit)

            if len(cols) == 1:
                i = cols[0]
                t, f, g = self.landscape_1d(i, span(i))
                fig = plots.landscape_1d_figure(t, f, g, P[:, i], name=names[i],
                                                unit=self.params.items[i].unit, ylabel=ylabel)
            else:
                a, b = cols[:2]
                grid = self.landscape_2d(a, b, span(a), span(b))
                fig = plots.landscape_figure(*grid, path=P[:, [a, b]], xlabel=label(a), ylabel=label(b))
            self.set(x_best)
            self.objective(x_best)
            files.append(common.save(fig, out, "landscape.png"))
        return files


def build(scene, **_):
    return CannonProblem(scene)
