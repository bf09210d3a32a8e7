"""Minimal reproduction of the Quadrants reverse-mode bug behind taichi-notes 33 (c),
ready to attach to an upstream issue (docs/probes/quadrants_issue.md).

    python docs/probes/quadrants_min_repro.py scalar   # right
    python docs/probes/quadrants_min_repro.py vector   # wrong on quadrants 1.3.3

a ← a·(1 − h·p), N times from a = 1.5; y = a_N; dy/dp = −N·h·1.5·(1 − h·p)^(N−1).
"""
import sys

import quadrants as qd

qd.init(arch=qd.cpu, default_fp=qd.f64, ad_stack_size=2048,
        ad_stack_experimental_enabled=True, log_level=qd.WARN)
N, H = 200, 0.01
VECTOR = sys.argv[1:] == ["vector"]
p = qd.field(qd.f64, (), needs_grad=True)
y = qd.field(qd.f64, (), needs_grad=True)


@qd.kernel
def run(n: qd.i32):
    for _ in range(1):
        a = 1.5
        for i in range(n):
            if qd.static(VECTOR):
                v = qd.Vector([a])          # a one-component vector of the carried scalar
                a = qd.Vector([v[0] - H * p[None] * v[0]])[0]
            else:
                a = a - H * p[None] * a
        y[None] = a


p[None] = 0.7
run(N)
y.grad[None] = 1.0
run.grad(N)
exact = -N * H * 1.5 * (1 - H * 0.7) ** (N - 1)
print(f"{'vector' if VECTOR else 'scalar'}: AD {p.grad[None]:.10f}  exact {exact:.10f}")
