"""Step grids: step sizes h, step start times t and the save index reached after each step.

A fixed-step grid is generated on demand from (t0, h, N) and the save times' step
indices, so its memory does not grow with the number of steps N (a long horizon of
10⁷ steps would otherwise hold ~80 B per step in numpy and field copies). An adaptive
grid stores the accepted steps it was given.

Both expose ``h``, ``t`` and ``obs`` as read-only sequences that index like numpy arrays
(an int, a slice or an integer array; negative indices count from the end) and
generate only the entries asked for, plus :meth:`state_times` and :meth:`trapezoid`
for the N + 1 grid states.
"""
import numpy as np


class _Seq:
    """Entries i of a length-N sequence computed by fn(int array) -> array."""

    def __init__(self, fn, N):
        self.fn, self.N = fn, N

    def __len__(self):
        return self.N

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self.fn(np.arange(*idx.indices(self.N)))
        a = np.asarray(idx)
        if a.ndim == 0:
            i = int(a)
            return self.fn(np.array([i + self.N if i < 0 else i]))[0]
        a = np.where(a < 0, a + self.N, a)
        return self.fn(a)


class StepGrid:
    """N steps from t0. ``obs0``: the save index at t0 (-1: none); ``ts``: the save times.

    Fixed steps: ``StepGrid.uniform(t0, h, N, save_steps, obs0, ts)`` with save j reached
    at the end of step save_steps[j] (increasing). Adaptive: ``StepGrid.arrays(h, t, obs,
    obs0, ts)``."""

    def __init__(self, N, obs0, ts, t0):
        self.N, self.obs0, self.ts, self.t0 = int(N), int(obs0), ts, float(t0)

    @classmethod
    def uniform(cls, t0, h, N, save_steps, save_index, obs0, ts):
        g = cls(N, obs0, ts, t0)
        g.uniform_h = float(h)
        g._sstep = np.asarray(save_steps, dtype=np.int64)
        g._sidx = np.asarray(save_index, dtype=np.int32)
        g.h = _Seq(lambda i: np.full(len(i), g.uniform_h), g.N)
        g.t = _Seq(lambda i: g.t0 + g.uniform_h * i, g.N)
        g.obs = _Seq(g._uniform_obs, g.N)
        g.key = ("uniform", g.t0, g.uniform_h, g.N, g.obs0, g._sstep.tobytes(), g._sidx.tobytes())
        return g

    @classmethod
    def arrays(cls, h, t, obs, obs0, ts):
        g = cls(len(h), obs0, ts, t[0] if len(t) else 0.0)
        g.uniform_h = None
        ha, ta, oa = (np.asarray(h, dtype=np.float64), np.asarray(t, dtype=np.float64),
                      np.asarray(obs, dtype=np.int32))
        g.h, g.t, g.obs = _Seq(lambda i: ha[i], g.N), _Seq(lambda i: ta[i], g.N), _Seq(lambda i: oa[i], g.N)
        g.key = ("arrays", g.obs0, ha.tobytes(), ta.tobytes(), oa.tobytes())
        return g

    def _uniform_obs(self, i):
        out = np.full(len(i), -1, np.int32)
        if len(self._sstep):
            pos = np.minimum(np.searchsorted(self._sstep, i), len(self._sstep) - 1)
            hit = self._sstep[pos] == i
            out[hit] = self._sidx[pos[hit]]
        return out

    @property
    def t_end(self) -> float:
        """Time of the last grid state (t0 + Σ h)."""
        return float(self.t[-1] + self.h[-1])

    def state_times(self, k):
        """Times of grid states k (int array in 0..N): t_k, with t_N = t_end."""
        k = np.asarray(k)
        if self.uniform_h is not None:
            return self.t0 + self.uniform_h * k
        last = k >= self.N
        out = np.empty(k.shape)
        out[~last] = self.t[k[~last]]
        out[last] = self.t_end
        return out

    def trapezoid(self, k):
        """Trapezoid weights ½(h_{k-1} + h_k) of grid states k (h_{-1} = h_N = 0)."""
        k = np.asarray(k)
        left = np.where(k > 0, self.h[np.clip(k - 1, 0, self.N - 1)], 0.0)
        right = np.where(k < self.N, self.h[np.clip(k, 0, self.N - 1)], 0.0)
        return 0.5 * (left + right)
