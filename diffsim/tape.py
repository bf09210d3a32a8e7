"""The tape: the one driver of every differentiable time loop in diffsim.

A system (the cannon, mass-spring bodies, an ODE integration) writes its physics as
Taichi kernels and hands them to a :class:`Tape` in a :class:`Kernels` bundle. The tape
owns everything around them:

- the schedule: which steps each launch advances (:class:`Piece`), set by a launch
  policy (:class:`Fused` or :class:`Stepped`), including the autodiff-stack bound on
  fused launches (:func:`segments`, ``runtime.MAX_FUSED_STEPS``);
- the forward sweep (start → pieces in order → finish), the reverse sweep (finish.grad
  → pieces' ``.grad`` backwards → start.grad → read the gradients) and the tangent
  (forward-mode) sweep (the forward sweep run inside Taichi's ``FwdMode``);
- the guards: a reverse sweep needs an accepted forward sweep with the same inputs,
  refuses fused launches longer than the autodiff stack allows (:func:`reverse_limit`),
  and clears the gradients first when the last reverse sweep left them dirty (it did
  not complete, or its read does not reset them).

The contract a system fulfils is :class:`Kernels`; docs/architecture.md ("How to add a
system") walks through it and tests/test_tape.py holds a complete small example.

Launch policies (the two forms of the time loop):

- :class:`Fused`: the time loop runs *inside* a kernel (for small systems and batches;
  launch latency dominates them). Each launch advances one segment of at most
  ``runtime.MAX_FUSED_STEPS`` steps from checkpoint slot ``k`` and stores its end state
  in slot ``k + 1``: the loop-carried locals live on Taichi's autodiff stack, whose size
  is fixed at ``runtime.AD_STACK_SIZE`` (docs/taichi-notes.md items 3, 11, 12), so the
  segment length bounds it. Memory is O(segments) stored states.
- :class:`Stepped`: one launch per ``steps_per_launch`` steps (for large systems: every
  per-step quantity lives in fields indexed by step, no autodiff stack). The remainder of
  the horizon runs one step per launch, so exactly two variants are compiled.

Both also say when batch loops run serialized (``serial(batch)``): a parallel dispatch
costs ~150 µs per launch on the 2-core CPU, a serial one ~20-40 µs (taichi-notes 24).
"""
import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

from . import runtime
from .errors import DiffsimError


class Piece(NamedTuple):
    """One launch of the segment kernel: it advances ``n`` steps from step ``t0``.
    ``k``: under :class:`Fused`, the checkpoint slot it starts from (it writes slot
    k + 1); under :class:`Stepped`, the launch's index."""
    k: int
    t0: int
    n: int


class Sweep(NamedTuple):
    """What a segment-argument builder is told about the sweep it serves: ``mode`` is
    "forward", "reverse" or "tangent"; ``refine``: steps are dt/refine (forward and
    tangent sweeps only, the piece's t0 and n are already in refined steps)."""
    mode: str
    refine: int = 1


FORWARD, REVERSE, TANGENT = Sweep("forward"), Sweep("reverse"), Sweep("tangent")


def reverse_limit() -> int:
    """Most steps a reverse sweep differentiates in one fused launch: a quarter of
    ``runtime.AD_STACK_SIZE`` (the 4× margin of runtime's docstring; measured: a
    Lotka–Volterra RK4 segment of 3,000 steps crashed the process with a bus error, and a
    stack a few entries short gives silently wrong gradients, taichi-notes 12)."""
    return runtime.AD_STACK_SIZE // 4


def segments(n_steps: int, max_fused: int | None = None) -> list[tuple[int, int]]:
    """Split ``n_steps`` into (first_step, length) pieces of at most ``max_fused`` steps
    each (default ``runtime.MAX_FUSED_STEPS``, read at call time), as equal as possible."""
    if n_steps < 1:
        raise DiffsimError(f"the number of steps must be at least 1, got {n_steps}")
    m = max_fused or runtime.MAX_FUSED_STEPS
    k = math.ceil(n_steps / m)
    base, extra = divmod(n_steps, k)
    out, start = [], 0
    for i in range(k):
        n = base + (1 if i < extra else 0)
        out.append((start, n))
        start += n
    return out


@dataclasses.dataclass(frozen=True)
class Fused:
    """Launch policy: the time loop fused inside the kernel, one launch per segment of at
    most ``max_fused`` steps (None: ``runtime.MAX_FUSED_STEPS`` when the schedule is
    made), checkpointed at segment boundaries. Batch loops run serialized for batches of
    at most ``serial_max_batch``. The segment kernel's default arguments are (k, t0, n)."""
    max_fused: Optional[int] = None
    serial_max_batch: int = 64

    def limit(self) -> int:
        """Most steps one launch may fuse (the autodiff-stack bound)."""
        return int(self.max_fused or runtime.MAX_FUSED_STEPS)

    def slots(self, n_steps: int) -> int:
        """Checkpoint slots a horizon of ``n_steps`` needs: segments + 1 (the start)."""
        return -(-int(n_steps) // self.limit()) + 1

    def pieces(self, n_steps: int) -> list[Piece]:
        return [Piece(k, t0, n) for k, (t0, n) in enumerate(segments(n_steps, self.limit()))]

    def serial(self, batch: int) -> bool:
        return batch <= self.serial_max_batch

    @staticmethod
    def args(piece: Piece, sweep: Sweep) -> tuple:
        return piece


@dataclasses.dataclass(frozen=True)
class Stepped:
    """Launch policy: one launch per ``steps_per_launch`` steps (the kernel unrolls them),
    then the remainder one step per launch; the system stores every step's state in its
    fields. Batch loops run serialized for batches of at most ``serial_max_batch``. The
    segment kernel's default arguments are (t0, n); n is 1 or ``steps_per_launch``."""
    steps_per_launch: int = 1
    serial_max_batch: int = 1

    def __post_init__(self):
        s = self.steps_per_launch
        if not (isinstance(s, int) and s >= 1):
            raise DiffsimError(f"steps_per_launch must be a positive integer, got {s!r}")

    def pieces(self, n_steps: int) -> list[Piece]:
        K = self.steps_per_launch
        full = n_steps // K * K
        out = [(t0, K) for t0 in range(0, full, K)] + [(t0, 1) for t0 in range(full, n_steps)]
        return [Piece(i, t0, n) for i, (t0, n) in enumerate(out)]

    def serial(self, batch: int) -> bool:
        return batch <= self.serial_max_batch

    @staticmethod
    def args(piece: Piece, sweep: Sweep) -> tuple:
        return piece.t0, piece.n


@dataclasses.dataclass
class Kernels:
    """What a system hands its :class:`Tape`: its kernels, and callables that launch them
    with the system's own arguments. Only ``start``, ``segment`` and ``finish`` are
    required for a forward sweep; the reverse sweep needs ``clear_grads`` and
    ``read_grads``; the tangent sweep needs ``dual_loss``.

    start(): forward: the initial state from the inputs (and zero any accumulator the
        sweep adds into). Differentiable, or see ``start_grad``.
    segment: the kernel advancing one :class:`Piece`, launched as
        ``segment(*segment_args(piece, sweep))``; its ``.grad`` runs the piece backwards
        (so it must recompute the piece from its stored start state, as a fused loop
        does, or read per-step fields, as a stepped one does).
    finish(*finish_args): forward: the objective into the loss field. The caller of a
        sweep passes ``finish_args`` (e.g. which objective).
    segment_args(piece, sweep) -> tuple: the segment kernel's arguments (default: the
        policy's, (k, t0, n) or (t0, n)).
    start_grad(), finish_grad(*finish_args): the reverse of start and finish (default:
        ``start.grad`` and ``finish.grad``; a system whose forward kernels also copy
        results out through ndarray arguments passes the ``.grad`` of plain variants).
    prepare(): run before every forward and tangent sweep, outside any AD mode (e.g.
        upload inputs, zero per-step accumulators).
    prepare_clears_grads: ``prepare`` also zeroes every gradient and seeds loss.grad = 1
        (saves a launch per reverse sweep).
    clear_grads(): zero every gradient the reverse sweep adds into and seed the loss's
        gradient with 1.
    read_grads() -> Any: after a reverse sweep, the gradients (returned by
        :meth:`Tape.backward`); ``read_resets_grads``: it also leaves them as
        ``clear_grads`` does, so the next reverse sweep needs no clearing launch.
    dual_loss: a 0-D field made with ``needs_dual=True`` (Taichi's FwdMode wants one).
    clear_duals(): before a tangent sweep, outside forward mode: zero every dual the
        sweep writes (forward mode turns each store into an addition to the dual).
    tangent_finish(*finish_args): the finish of a tangent sweep (default ``finish``; one
        without ndarray arguments, which do not compile in forward mode).
    whole(*finish_args): optional, forward only: start, every piece of the schedule and
        finish in one launch, leaving the same values (checkpoints included) as those
        launches; the tape uses it for plain forward sweeps (no refinement, the default
        segment arguments). Launch overhead (~20 µs each) is most of a small system's
        forward pass. The reverse and tangent sweeps still use the separate kernels.
    """
    start: Callable[[], Any]
    segment: Any
    finish: Callable[..., Any]
    segment_args: Optional[Callable[[Piece, Sweep], tuple]] = None
    start_grad: Optional[Callable[[], Any]] = None
    finish_grad: Optional[Callable[..., Any]] = None
    prepare: Optional[Callable[[], Any]] = None
    prepare_clears_grads: bool = False
    clear_grads: Optional[Callable[[], Any]] = None
    read_grads: Optional[Callable[[], Any]] = None
    read_resets_grads: bool = False
    dual_loss: Any = None
    clear_duals: Optional[Callable[[], Any]] = None
    tangent_finish: Optional[Callable[..., Any]] = None
    whole: Optional[Callable[..., Any]] = None


class Tape:
    """The driver of one system's time loop: schedule, sweeps and guards.

    kernels: the system's :class:`Kernels`. policy: :class:`Fused` or :class:`Stepped`.
    n_steps: the horizon in steps (``set_horizon`` changes it). inputs: how the system's
    users change its inputs, for the staleness message (e.g. "set_inputs()").
    """

    def __init__(self, kernels: Kernels, policy, n_steps: int, *, inputs: str = "set_inputs()"):
        self.k = kernels
        self.policy = policy
        self.inputs = inputs
        seg = kernels.segment
        self._seg_args = kernels.segment_args or policy.args
        self._start_grad = kernels.start_grad or getattr(kernels.start, "grad", None)
        self._finish_grad = kernels.finish_grad or getattr(kernels.finish, "grad", None)
        self._seg, self._seg_grad = seg, getattr(seg, "grad", None)
        self._version = 0          # bumps whenever the inputs change
        self._accepted = None      # input version of the sweep a reverse may follow
        self._grads_clean = False  # gradients zero and loss.grad = 1
        self.set_horizon(n_steps)

    # -- schedule --------------------------------------------------------------------
    def set_horizon(self, n_steps: int) -> None:
        """Schedule ``n_steps`` steps (launch pieces from the policy); invalidates the tape."""
        self.n_steps = int(n_steps)
        self.pieces = self.policy.pieces(self.n_steps)
        self._refined = {1: self.pieces}
        # the longest fused launch a reverse sweep would differentiate (Stepped: none)
        self._fused_longest = max(p.n for p in self.pieces) if isinstance(self.policy, Fused) else 0
        self._accepted = None

    @property
    def segs(self) -> list[tuple[int, int]]:
        """The pieces as (first step, steps)."""
        return [(p.t0, p.n) for p in self.pieces]

    def refined(self, factor: int) -> list[Piece]:
        """The pieces with every step split into ``factor`` steps (same launches: a
        forward or tangent sweep keeps no autodiff stack, so it may fuse more steps)."""
        p = self._refined.get(factor)
        if p is None:
            if not (isinstance(factor, int) and factor >= 1):
                raise DiffsimError(f"factor must be a positive integer, got {factor!r}")
            if not isinstance(self.policy, Fused):
                raise DiffsimError("refined sweeps (steps of dt/factor) need a Fused launch policy")
            p = [Piece(q.k, factor * q.t0, factor * q.n) for q in self.pieces]
            self._refined[factor] = p
        return p

    # -- guards ----------------------------------------------------------------------
    def inputs_changed(self) -> None:
        """The system's inputs changed: a reverse sweep now needs a new forward sweep."""
        self._version += 1

    def invalidate(self) -> None:
        """The stored forward values were overwritten or are not to be differentiated."""
        self._accepted = None

    def accept(self) -> None:
        """Let reverse sweeps differentiate the last forward (or tangent) sweep."""
        self._accepted = self._version

    @property
    def valid(self) -> bool:
        """Whether a reverse sweep may run now."""
        return self._accepted is not None and self._accepted == self._version

    def check_reverse(self) -> None:
        """DiffsimError unless a reverse sweep may run (see :attr:`valid`)."""
        if self._accepted is None:
            raise DiffsimError("backward() needs a forward() first")
        if self._accepted != self._version:
            raise DiffsimError(f"backward() after {self.inputs}: the inputs changed since the "
                               "last forward(), so its gradients would mix two points; call "
                               "forward() again first")

    def clear_grads(self) -> None:
        """Zero the gradients and seed the loss (the state a reverse sweep starts from)."""
        self.k.clear_grads()
        self._grads_clean = True

    # -- sweeps ----------------------------------------------------------------------
    def forward(self, finish_args=(), *, refine: int = 1, accept: bool = True,
                segment_args=None, finish: bool = True):
        """Forward sweep: prepare, start, every piece in order, finish(*finish_args)
        (skipped with ``finish=False``); returns what finish returns. refine: steps of
        dt/refine (never accepted for a reverse sweep). accept: let backward() follow
        (callers with checks after the sweep pass False and call :meth:`accept`).
        segment_args: a builder for this sweep only (e.g. recording a trajectory)."""
        k = self.k
        self._accepted = None
        if k.prepare is not None:
            k.prepare()
            if k.prepare_clears_grads:
                self._grads_clean = True
        if k.whole is not None and refine == 1 and segment_args is None and finish:
            out = k.whole(*finish_args)
            if accept:
                self._accepted = self._version
            return out
        k.start()
        seg, build = self._seg, segment_args or self._seg_args
        if refine == 1:
            for p in self.pieces:
                seg(*build(p, FORWARD))
        else:
            sw = Sweep("forward", refine)
            for p in self.refined(refine):
                seg(*build(p, sw))
        out = k.finish(*finish_args) if finish else None
        if accept and refine == 1:
            self._accepted = self._version
        return out

    def backward(self, finish_args=()):
        """Reverse sweep of the accepted forward sweep: finish's reverse, the pieces'
        ``.grad`` backwards, start's reverse; returns ``read_grads()``. Gradients are
        cleared first unless they are known to be clean, so they never accumulate across
        calls; refuses (DiffsimError) without a valid forward sweep (:meth:`check_reverse`)."""
        self.check_reverse()
        if self._fused_longest > reverse_limit():
            lim = reverse_limit()
            raise DiffsimError(
                f"the reverse sweep would differentiate {self._fused_longest} steps fused in "
                f"one launch; the autodiff stack (runtime.AD_STACK_SIZE = "
                f"{runtime.AD_STACK_SIZE} entries) allows at most {lim} with diffsim's 4x "
                f"margin (more gives wrong gradients or crashes the process): use segments "
                f"of at most {lim} steps (max_fused <= {lim})")
        k = self.k
        if not self._grads_clean:
            k.clear_grads()
        # dirty until the read resets them: an interrupted sweep leaves partial sums
        self._grads_clean = False
        self._finish_grad(*finish_args)
        seg, build = self._seg_grad, self._seg_args
        for p in reversed(self.pieces):
            seg(*build(p, REVERSE))
        self._start_grad()
        out = k.read_grads()
        if k.read_resets_grads:
            self._grads_clean = True
        return out

    def tangent(self, finish_args=(), *, refine: int = 1, read=None):
        """Tangent (forward-mode) sweep from the duals the caller seeded: prepare and
        clear_duals outside forward mode, then start, the pieces and tangent_finish inside
        it. Returns ``read()`` called inside the forward-mode context (leaving it zeroes
        ``dual_loss``'s dual), or None. The values it leaves are a forward sweep's; it is
        not accepted for a reverse sweep (call :meth:`accept` where the system's fields
        hold everything its reverse needs)."""
        k = self.k
        self._accepted = None
        if k.prepare is not None:
            k.prepare()
            if k.prepare_clears_grads:
                self._grads_clean = True
        if k.clear_duals is not None:
            k.clear_duals()
        seg, build = self._seg, self._seg_args
        sw = TANGENT if refine == 1 else Sweep("tangent", refine)
        finish = k.tangent_finish or k.finish
        out = None
        with tangent_mode(k.dual_loss):
            k.start()
            for p in self.refined(refine):
                seg(*build(p, sw))
            finish(*finish_args)
            if read is not None:
                out = read()
        return out


def tangent_mode(field):
    """Context in which every Taichi kernel launched runs in forward (tangent) mode,
    propagating the ``.dual`` of fields made with ``needs_dual=True`` from the duals
    the caller seeded beforehand. ``field``: any 0-D dual field (ti.ad.FwdMode wants
    a loss and a parameter; it zeroes this one's dual on entry and exit). FwdMode's own
    seeding handles only 1-D parameters (taichi-notes 22), so callers seed with
    ``x.dual.from_numpy`` before entering (a copy inside the context would itself run
    in forward mode)."""
    return _tangent_mode_class()(loss=field, param=field, seed=[0.0], clear_gradients=False)


_TANGENT_MODE = {}


def _tangent_mode_class():
    """ti.ad.FwdMode that restores every kernel's mode on exit. Taichi 1.7.4's restores
    modes in call order, so a kernel launched twice inside the context got its second
    recorded mode (FORWARD) back and ran in forward mode ever after (measured: a later
    trace kernel then failed to compile). Made on first use: subclassing at import would
    fix the backend before ``diffsim.init(backend=...)`` could choose it."""
    if "cls" not in _TANGENT_MODE:
        from .backend import ti

        class _TangentMode(ti.ad.FwdMode):
            def recover_kernels(self):
                for call, mode in reversed(list(zip(self.calls, self.modes))):
                    call.autodiff_mode = mode
                self.kernels_recovered = True
        _TANGENT_MODE["cls"] = _TangentMode
    return _TANGENT_MODE["cls"]
