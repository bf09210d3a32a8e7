"""The one place that initialises the kernel runtime (Taichi or Quadrants, see backend.py).

``diffsim.init(arch="cpu", precision="f64", backend=None)`` sets the arch, the float type
and the kernel language;
every simulation object records the runtime *generation* it was built in and checks it
before each kernel launch, so an object used after a re-initialisation raises
:class:`~diffsim.errors.RuntimeStateError` instead of crashing the process
(Taichi frees all fields on re-init; touching one segfaults).

Autodiff stack. Reverse-mode kernels whose time loop runs inside the kernel keep every
loop-carried local on Taichi's autodiff stack, one entry per iteration. Measured with
taichi 1.7.4 (see docs/taichi-notes.md): a stack a few entries too small gives *silently
wrong* gradients, and a stack of 32,768 entries crashes the CPU backend. diffsim therefore
fixes the stack at :data:`AD_STACK_SIZE` and never fuses more than :data:`MAX_FUSED_STEPS`
steps into one launch: longer horizons are split into segments (:func:`segments`), whose
boundary states are stored, so any horizon is safe and memory is O(segments). The
schedule and the sweeps are the tape's (:mod:`diffsim.tape`).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from . import backend as _backend
from .backend import ti
from .errors import DiffsimError, RuntimeStateError

#: Entries per autodiff-stack variable (4× margin over MAX_FUSED_STEPS). Taichi keeps
#: these stacks on the CPU worker thread's native stack: entries × variables × 16 B must
#: stay well under its 8 MiB, or the reverse kernel segfaults (RK4 crashed at 4096).
AD_STACK_SIZE = 2048
#: Most time steps a fused kernel runs in one launch; longer horizons are segmented.
MAX_FUSED_STEPS = 500

ARCHS = ("cpu", "cuda", "vulkan", "metal", "auto")
PRECISIONS = ("f64", "f32")


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """The active runtime: the backend picked, the float type and the generation."""

    arch: str          # the backend actually running: "cpu", "cuda", "vulkan", "metal"
    requested: str     # what was asked for ("auto" included)
    precision: str     # "f64" or "f32"
    generation: int    # bumps on every real re-initialisation
    backend: str = "taichi"   # kernel language: "taichi" or "quadrants" (diffsim.backend)

    @property
    def real(self):
        """The kernel float type of this runtime (ti.f64 or ti.f32)."""
        return ti.f64 if self.precision == "f64" else ti.f32

    @property
    def numpy_dtype(self):
        import numpy as np
        return np.float64 if self.precision == "f64" else np.float32


_current: RuntimeInfo | None = None
_generation = 0


def _arch_of(name: str):
    return {"cpu": ti.cpu, "cuda": ti.cuda, "vulkan": ti.vulkan, "metal": ti.metal}[name]


def _picked_arch() -> str:
    a = _backend.lang_impl().current_cfg().arch
    if a in (ti.x64, ti.arm64):
        return "cpu"
    return {ti.cuda: "cuda", ti.vulkan: "vulkan", ti.metal: "metal"}.get(a, str(a))


def _stack_options(name: str) -> dict:
    """Autodiff-stack options of ``ti.init`` for a backend. Taichi: a fixed stack of
    AD_STACK_SIZE entries. Quadrants 1.3.3 needs ``ad_stack_experimental_enabled=True`` or a
    reverse kernel with a dynamic loop carrying nonlinear state does not compile; it sizes
    the stack itself from the loop bounds, except where a bound is a scalar kernel argument
    (ours are), so the explicit size is kept too."""
    if name == "quadrants":
        return {"ad_stack_experimental_enabled": True, "ad_stack_size": AD_STACK_SIZE}
    return {"ad_stack_size": AD_STACK_SIZE}


def init(arch: str = "cpu", precision: str = "f64", *, backend: str | None = None,
         verbose: bool = False) -> RuntimeInfo:
    """Initialise (or keep) the kernel runtime and return its description.

    arch: "cpu", "cuda", "vulkan", "metal" or "auto" (best available, falling back to
    cpu; the pick is in the returned ``arch``). precision: "f64" (default; gradients are
    checked in float64) or "f32". backend: "taichi" or "quadrants" (default: the
    environment variable DIFFSIM_BACKEND, else "taichi"); one backend per process, fixed
    at the first init (see :mod:`diffsim.backend`). Calling again with the same settings
    is a no-op; a different arch or precision re-initialises the runtime, which
    invalidates every object made before.
    """
    global _current, _generation
    if arch not in ARCHS:
        raise DiffsimError(f"arch={arch!r} is not known; use one of {', '.join(ARCHS)}")
    if precision not in PRECISIONS:
        raise DiffsimError(f"precision={precision!r} is not known; use 'f64' or 'f32'")
    name, _ = _backend.select(backend)
    if _current is not None and _current.requested == arch and _current.precision == precision:
        return _current
    real = ti.f64 if precision == "f64" else ti.f32
    if arch == "auto":
        archs = [ti.cuda, ti.vulkan, ti.metal, ti.cpu] if precision == "f32" else [ti.cuda, ti.cpu]
        ti_arch = archs
    else:
        ti_arch = _arch_of(arch)
    if precision == "f64" and arch in ("vulkan", "metal"):
        raise DiffsimError(f"arch={arch!r} has no float64; pass precision='f32' or use cpu/cuda")
    with _backend.stdout_to_stderr(quiet=not verbose):
        ti.init(arch=ti_arch, default_fp=real, default_ip=ti.i32, offline_cache=True,
                log_level=ti.INFO if verbose else ti.WARN, **_stack_options(name))
    picked = _picked_arch()
    if arch not in ("auto", picked):
        # Taichi silently falls back to CPU when the asked-for backend is missing.
        print(f"diffsim: arch={arch!r} is not available here; running on {picked}",
              file=sys.stderr)
    _generation += 1
    _current = RuntimeInfo(arch=picked, requested=arch, precision=precision,
                           generation=_generation, backend=name)
    return _current


def current() -> RuntimeInfo:
    """The active runtime, initialising the default (cpu, f64) if none is."""
    return _current if _current is not None else init()


def has_ad_stack(info: RuntimeInfo | None = None) -> bool:
    """Whether fused in-kernel time loops can be differentiated (x64, arm64, CUDA)."""
    return (info or current()).arch in ("cpu", "cuda")


def segments(n_steps: int, max_fused: int | None = None) -> list[tuple[int, int]]:
    """Split ``n_steps`` into (first_step, length) pieces of at most MAX_FUSED_STEPS each,
    as equal as possible (the schedule of :class:`diffsim.tape.Fused`; see there)."""
    from .tape import segments as _segments
    return _segments(n_steps, max_fused)


#: Largest allocation diffsim makes without being told otherwise: half the machine's
#: memory (DIFFSIM_MAX_BYTES overrides). Taichi aborts the process on a failed
#: allocation, so sizes are checked before any field is made.
def memory_limit() -> int:
    env = os.environ.get("DIFFSIM_MAX_BYTES")
    if env:
        return int(float(env))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return total // 2


def check_memory(nbytes, *, what: str, key: str | None = None, value=None) -> None:
    """Refuse (DiffsimError, exit 2) an allocation of ``nbytes`` bytes above
    :func:`memory_limit`, naming ``what`` is being allocated and the scene ``key``/``value``
    that sized it. Call it before making fields; ``nbytes`` may be a float or huge int."""
    limit = memory_limit()
    if not (nbytes <= limit):      # also catches NaN
        where = f" (set by {key} = {value!r})" if key else ""
        raise DiffsimError(f"{what}{where} would need {_fmt_bytes(nbytes)}, more than the "
                           f"{_fmt_bytes(limit)} diffsim allows on this machine "
                           "(DIFFSIM_MAX_BYTES raises it); make it smaller")


def _fmt_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} B"


class RuntimeBound:
    """Mixin for objects owning Taichi fields: remembers the runtime that made them."""

    def _bind_runtime(self) -> RuntimeInfo:
        self._runtime = current()
        return self._runtime

    def _check_runtime(self) -> None:
        if _current is None or _current.generation != self._runtime.generation:
            raise RuntimeStateError(
                f"this {type(self).__name__} was built before diffsim.init() re-initialised "
                "Taichi; its fields are gone. Build it again after the last init().")
