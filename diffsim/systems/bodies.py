"""Mass-spring bodies: point masses and springs, generators and validation.

A :class:`Body` is plain data (numpy arrays, SI-like units): positions (N, 2) [m],
masses (N,) [kg], springs as index pairs (S, 2) with stiffness [N/m], damping along the
spring [N·s/m], rest length [m] and actuation (dimensionless: an actuated spring's rest
length is ``rest · (1 + actuation · u)`` with controller output u ∈ [-1, 1]), and a
``pinned`` flag per mass. Generators build DiffTaichi's four robots (A: 6 masses / 11
springs, B: 14/30, C: 20/46, D: 26/61), rectangular grids, cloths and the three-mass
triangle. :func:`body_from_tables` validates scene entries and names the bad one.
"""
import dataclasses

import numpy as np

from ..errors import DiffsimError, SceneError


@dataclasses.dataclass
class Body:
    """Point masses and springs. Shapes: x (N, 2), mass (N,), pinned (N,) bool,
    springs (S, 2) int, stiffness/damping/rest/actuation (S,)."""

    x: np.ndarray
    mass: np.ndarray
    springs: np.ndarray
    stiffness: np.ndarray
    damping: np.ndarray
    rest: np.ndarray
    actuation: np.ndarray
    pinned: np.ndarray
    v: np.ndarray = None

    def __post_init__(self):
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1, 2)
        n = len(self.x)
        self.mass = np.broadcast_to(np.asarray(self.mass, dtype=np.float64), (n,)).copy()
        self.springs = np.asarray(self.springs, dtype=np.int64).reshape(-1, 2)
        s = len(self.springs)
        for name in ("stiffness", "damping", "rest", "actuation"):
            setattr(self, name, np.broadcast_to(np.asarray(getattr(self, name), dtype=np.float64), (s,)).copy())
        self.pinned = np.broadcast_to(np.asarray(self.pinned, dtype=bool), (n,)).copy()
        self.v = np.zeros((n, 2)) if self.v is None else np.asarray(self.v, dtype=np.float64).reshape(n, 2)

    @property
    def n_masses(self) -> int:
        return len(self.x)

    @property
    def n_springs(self) -> int:
        return len(self.springs)

    @property
    def actuated(self) -> np.ndarray:
        """Indices of the springs with nonzero actuation (the controller's outputs)."""
        return np.nonzero(self.actuation != 0)[0]


def _lengths(x, springs):
    d = x[springs[:, 0]] - x[springs[:, 1]]
    return np.sqrt((d * d).sum(axis=1))


# -- DiffTaichi's robots (geometry from examples/mass_spring_robot_config.py) ------------
class _Mesh:
    def __init__(self):
        self.points, self.springs, self.act = {}, [], []

    def point(self, i, j):
        if (i, j) not in self.points:
            self.points[(i, j)] = len(self.points)
        return self.points[(i, j)]

    def spring(self, a, b, act):
        if (a, b) in self.springs or (b, a) in self.springs:
            return
        self.springs.append((a, b))
        self.act.append(act)

    def square(self, i, j, act=0.0):
        a, b = self.point(i, j), self.point(i, j + 1)
        c, d = self.point(i + 1, j), self.point(i + 1, j + 1)
        self.spring(a, b, act)
        self.spring(c, d, act)
        for p in (a, b, c, d):
            for q in (a, b, c, d):
                if p != q:
                    self.spring(p, q, 0.0)

    def triangle(self, i, j):
        a, b, d = self.point(i + 0.5, j + 0.5), self.point(i, j + 1), self.point(i + 1, j + 1)
        for p in (a, b, d):
            for q in (a, b, d):
                if p != q:
                    self.spring(p, q, 0.0)

    def positions(self):
        x = np.zeros((len(self.points), 2))
        for (i, j), k in self.points.items():
            x[k] = (i * 0.05 + 0.1, j * 0.05 + 0.1)
        return x


def robot(name: str, stiffness=None, actuation=None) -> Body:
    """DiffTaichi's robot "A", "B", "C" or "D"; rest lengths are the initial distances.
    stiffness: override every spring's stiffness (A: 14000, B–D: 3e4 by default);
    actuation: override the actuation of the actuated springs (A: 0.1, B–D: 0.15)."""
    name = name.upper()
    if name == "A":
        x = np.array([[0.2, 0.1], [0.3, 0.13], [0.4, 0.1], [0.2, 0.2], [0.3, 0.2], [0.4, 0.2]])
        springs = np.array([(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (2, 5), (0, 4), (1, 4),
                            (2, 4), (3, 1), (5, 1)])
        k0, act = 14000.0, np.full(len(springs), 0.1)
    else:
        m = _Mesh()
        if name == "B":
            m.triangle(2, 0); m.triangle(0, 0)
            m.square(0, 1, 0.15); m.square(0, 2); m.square(1, 2); m.square(2, 1, 0.15); m.square(2, 2)
        elif name == "C":
            for j in range(9):
                m.square(2, j, 0.15)
        elif name == "D":
            for (i, j, a) in [(2, 0, .15), (0, 0, .15), (0, 1, .15), (0, 2, 0), (1, 2, 0),
                              (2, 1, .15), (2, 2, 0), (2, 3, 0), (2, 4, 0), (3, 1, 0),
                              (4, 0, .15), (4, 1, .15)]:
                m.square(i, j, a)
        else:
            raise SceneError(f"unknown robot {name!r}; use A, B, C or D")
        x, springs, k0, act = m.positions(), np.array(m.springs), 3e4, np.array(m.act)
    if actuation is not None:
        act = np.where(act != 0, actuation, 0.0)
    k = k0 if stiffness is None else stiffness
    return Body(x=x, mass=1.0, springs=springs, stiffness=k, damping=0.0,
                rest=_lengths(x, springs), actuation=act, pinned=False)


def grid(nx: int, ny: int, width: float, height: float, origin=(0.0, 0.0), *, total_mass=1.0,
         stiffness=1e4, damping=0.0, diagonals=False, pin=()) -> Body:
    """An nx × ny lattice of masses over [origin, origin + (width, height)] with horizontal
    and vertical springs (plus both diagonals if ``diagonals``); rest lengths are the
    initial distances; ``total_mass`` [kg] is shared equally; ``pin`` lists mass indices
    (row-major, index = j·nx + i with j the row from the bottom) held fixed."""
    xs = np.linspace(0.0, width, nx) + origin[0]
    ys = np.linspace(0.0, height, ny) + origin[1]
    x = np.array([(xs[i], ys[j]) for j in range(ny) for i in range(nx)])
    idx = lambda i, j: j * nx + i
    springs = [(idx(i, j), idx(i + 1, j)) for j in range(ny) for i in range(nx - 1)]
    springs += [(idx(i, j), idx(i, j + 1)) for j in range(ny - 1) for i in range(nx)]
    if diagonals:
        springs += [(idx(i, j), idx(i + 1, j + 1)) for j in range(ny - 1) for i in range(nx - 1)]
        springs += [(idx(i + 1, j), idx(i, j + 1)) for j in range(ny - 1) for i in range(nx - 1)]
    springs = np.array(springs)
    pinned = np.zeros(len(x), dtype=bool)
    pinned[list(pin)] = True
    return Body(x=x, mass=total_mass / len(x), springs=springs, stiffness=stiffness,
                damping=damping, rest=_lengths(x, springs), actuation=0.0, pinned=pinned)


def cloth(n=64, size=1.0, top=1.0, **kw) -> Body:
    """A hanging n × n cloth over a ``size`` square whose top edge is at height ``top``,
    its two top corners pinned (see :func:`grid`)."""
    return grid(n, n, size, size, (0.0, top - size),
                pin=(n * (n - 1), n * n - 1), **kw)


def triangle() -> Body:
    """DiffTaichi's three masses (0.3, 0.25), (0.2, 0.15), (0.4, 0.3) joined pairwise."""
    x = np.array([[0.3, 0.25], [0.2, 0.15], [0.4, 0.3]])
    springs = np.array([(0, 1), (0, 2), (1, 2)])
    return Body(x=x, mass=1.0, springs=springs, stiffness=10.0, damping=0.0,
                rest=_lengths(x, springs), actuation=0.0, pinned=False)


# -- validation ------------------------------------------------------------------------
def check_body(body: Body) -> None:
    """Refuse a body the simulation cannot run, naming the mass or spring: non-finite
    values, mass <= 0, spring indices out of range or equal, rest length <= 0, negative
    stiffness/damping, |actuation| >= 1 (rest length could reach 0), and springs whose
    two masses start at the same point (the spring direction d/|d| is undefined: NaN).
    Raises DiffsimError."""
    n = body.n_masses
    if n < 1:
        raise DiffsimError("a body needs at least one mass")
    for name, arr in (("x", body.x), ("v", body.v), ("mass", body.mass)):
        bad = np.nonzero(~np.isfinite(arr).reshape(n, -1).all(axis=1))[0]
        if len(bad):
            raise DiffsimError(f"mass {bad[0]}: {name} = {arr[bad[0]]} is not finite")
    bad = np.nonzero(~(body.mass > 0))[0]
    if len(bad):
        raise DiffsimError(f"mass {bad[0]}: mass = {body.mass[bad[0]]} kg; it must be > 0")
    sp = body.springs
    for j, (a, b) in enumerate(sp):
        if not (0 <= a < n and 0 <= b < n):
            raise DiffsimError(f"spring {j} joins masses ({a}, {b}); indices must be 0..{n - 1}")
        if a == b:
            raise DiffsimError(f"spring {j} joins mass {a} to itself; a spring needs two masses")
    for name in ("stiffness", "damping", "rest", "actuation"):
        arr = getattr(body, name)
        bad = np.nonzero(~np.isfinite(arr))[0]
        if len(bad):
            j = bad[0]
            raise DiffsimError(f"spring {j} (masses {sp[j, 0]}, {sp[j, 1]}): {name} = {arr[j]} is not finite")
    for name, ok, rule in (("rest", body.rest > 0, "> 0 m"), ("stiffness", body.stiffness >= 0, ">= 0"),
                           ("damping", body.damping >= 0, ">= 0"),
                           ("actuation", np.abs(body.actuation) < 1, "in (-1, 1) (rest·(1 + a·u) must stay > 0)")):
        bad = np.nonzero(~ok)[0]
        if len(bad):
            j = bad[0]
            raise DiffsimError(f"spring {j} (masses {sp[j, 0]}, {sp[j, 1]}): {name} = "
                               f"{getattr(body, name)[j]}; it must be {rule}")
    if len(sp):
        zero = np.nonzero(_lengths(body.x, sp) == 0)[0]
        if len(zero):
            j = zero[0]
            raise DiffsimError(f"spring {j} joins masses {sp[j, 0]} and {sp[j, 1]}, which start at the same "
                               f"point {tuple(body.x[sp[j, 0]].tolist())}: a zero-length spring has no direction; "
                               "move one of the masses")


def stability_limit(body: Body) -> tuple[float, int]:
    """(dt_max [s], mass index): a time step above dt_max makes the explicit step
    (semi-implicit Euler) unstable for small oscillations about the initial shape, with
    or without damping; ``(inf, -1)`` when no free mass has a spring.

    Why: the step is stable only if dt·ω_max ≤ 2 (undamped; velocity damping exp(-c·dt)
    and explicit spring damping only lower this limit), and ω_max² ≥ K_ii/m_i for every
    free mass i and axis (a Rayleigh quotient of the stiffness matrix K = Σ k_s n_s n_sᵀ,
    n_s the spring's unit direction at the initial positions). So the true limit
    2/ω_max is at most dt_max = 2/sqrt(max K_ii/m_i), and a step above dt_max is unstable
    whatever the rest of the body does. For one spring k holding a mass m to a pinned
    one, dt_max = 2·sqrt(m/k) is the limit itself."""
    K = np.zeros((body.n_masses, 2))
    for (i, j), k in zip(body.springs, body.stiffness):
        d = body.x[i] - body.x[j]
        l2 = float(d @ d)
        if l2 > 0:
            K[i] += k * d * d / l2
            K[j] += k * d * d / l2
    lam = np.where(body.pinned[:, None], 0.0, K / body.mass[:, None])
    i = int(np.argmax(lam.max(axis=1)))
    top = float(lam[i].max())
    return (2.0 / np.sqrt(top), i) if top > 0 else (float("inf"), -1)


def zero_length_springs(x: np.ndarray, springs: np.ndarray, tol=0.0) -> np.ndarray:
    """Indices of springs whose length at positions ``x`` (N, 2) is <= ``tol`` [m]."""
    if len(springs) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.nonzero(_lengths(x, springs) <= tol)[0]


# -- scene tables -> Body, with errors naming the entry ----------------------------------
def _number(e, k, default, *, path, key):
    """e[k] (or default) as a finite float; SceneError naming ``key.k`` otherwise."""
    v = e.get(k, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise SceneError("must be a finite number", file=path, key=f"{key}.{k}", value=v, has_value=True)
    return float(v)


def body_from_tables(masses, springs, *, path="", defaults=None) -> Body:
    """Build a Body from scene arrays ``[[masses]]`` (x, y, mass=1 [kg] > 0, pinned=false
    (a TOML boolean), vx=0, vy=0 [m/s]) and ``[[springs]]`` (a, b: mass indices, stiffness
    [N/m] >= 0, damping [N·s/m] >= 0, rest [m] > 0 (default: initial distance), actuation
    in (-1, 1), default 0). Every key's type and range is checked; SceneError names the
    file, the key (e.g. ``masses[3].pinned``) and the value."""
    d = {"stiffness": 1.0, "damping": 0.0, "actuation": 0.0, **(defaults or {})}
    if not isinstance(masses, list) or not masses:
        raise SceneError("needs at least one [[masses]] entry", file=path, key="masses")
    xs, ms, pins, vs = [], [], [], []
    mkeys = {"x", "y", "mass", "pinned", "vx", "vy"}
    for i, e in enumerate(masses):
        key = f"masses[{i}]"
        if not isinstance(e, dict):
            raise SceneError("expected a table {x=…, y=…, mass=…}", file=path, key=key, value=e, has_value=True)
        for k in e:
            if k not in mkeys:
                raise SceneError(f"unknown key; known: {', '.join(sorted(mkeys))}", file=path, key=f"{key}.{k}")
        for k in ("x", "y"):
            if k not in e:
                raise SceneError("is required", file=path, key=f"{key}.{k}")
        x, y = _number(e, "x", 0.0, path=path, key=key), _number(e, "y", 0.0, path=path, key=key)
        m = _number(e, "mass", 1.0, path=path, key=key)
        if not m > 0:
            raise SceneError("mass must be > 0 kg", file=path, key=f"{key}.mass", value=e["mass"], has_value=True)
        pin = e.get("pinned", False)
        if not isinstance(pin, bool):
            # a string "false" is truthy: refusing it keeps a typo from pinning the mass
            raise SceneError("must be true or false (a TOML boolean, not a string or number)",
                             file=path, key=f"{key}.pinned", value=pin, has_value=True)
        xs.append((x, y))
        ms.append(m)
        pins.append(pin)
        vs.append((_number(e, "vx", 0.0, path=path, key=key), _number(e, "vy", 0.0, path=path, key=key)))
    n = len(xs)
    x = np.array(xs)
    if not isinstance(springs, list):
        raise SceneError("expected an array of tables [[springs]]", file=path, key="springs")
    pairs, k_, c_, r_, a_ = [], [], [], [], []
    skeys = {"a", "b", "stiffness", "damping", "rest", "actuation"}
    for j, e in enumerate(springs):
        key = f"springs[{j}]"
        if not isinstance(e, dict):
            raise SceneError("expected a table {a=…, b=…}", file=path, key=key, value=e, has_value=True)
        for k in e:
            if k not in skeys:
                raise SceneError(f"unknown key; known: {', '.join(sorted(skeys))}", file=path, key=f"{key}.{k}")
        for k in ("a", "b"):
            v = e.get(k)
            if v is None:
                raise SceneError("is required (a mass index)", file=path, key=f"{key}.{k}")
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
                raise SceneError(f"must be the index of a mass, 0..{n - 1}", file=path,
                                 key=f"{key}.{k}", value=v, has_value=True)
        a, b = e["a"], e["b"]
        if a == b:
            raise SceneError("a spring must join two different masses", file=path, key=f"{key}.b",
                             value=b, has_value=True)
        length = float(np.linalg.norm(x[a] - x[b]))
        if length == 0:
            raise SceneError(f"joins masses {a} and {b}, which start at the same point {tuple(x[a].tolist())}: "
                             "a zero-length spring has no direction (NaN force); move one of the masses",
                             file=path, key=key)
        kk = _number(e, "stiffness", d["stiffness"], path=path, key=key)
        cc = _number(e, "damping", d["damping"], path=path, key=key)
        rest = _number(e, "rest", length, path=path, key=key)
        act = _number(e, "actuation", d["actuation"], path=path, key=key)
        for k, v, ok, rule in (("stiffness", kk, kk >= 0, ">= 0 N/m"), ("damping", cc, cc >= 0, ">= 0 N·s/m"),
                               ("rest", rest, rest > 0, "> 0 m"),
                               ("actuation", act, abs(act) < 1, "in (-1, 1): rest·(1 + actuation·u) must stay > 0")):
            if not ok:
                raise SceneError(f"must be {rule} (spring {j} joins masses {a} and {b})", file=path,
                                 key=f"{key}.{k}", value=e.get(k, v), has_value=True)
        pairs.append((a, b)); k_.append(kk); c_.append(cc); r_.append(rest); a_.append(act)
    return Body(x=x, mass=np.array(ms), springs=np.array(pairs, dtype=np.int64).reshape(-1, 2),
                stiffness=np.array(k_), damping=np.array(c_), rest=np.array(r_),
                actuation=np.array(a_), pinned=np.array(pins), v=np.array(vs))
