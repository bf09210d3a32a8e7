"""Quadrants 1.3.3 reverse mode: a vector local inside a dynamic loop, multiplied by a
parameter, gets a wrong parameter gradient even when it is NOT loop-carried (built from
field loads each iteration). Run: python docs/probes/quadrants_vector_in_loop.py
[quadrants|taichi]. Euler on y' = (y1, -p y0), 100 steps of 0.01, L = y0(T)^2 + y1(T).

Measured (f64, CPU):            quadrants          taichi 1.7.4
  scal  (scalars carried, a list to rhs)   right 7e-11      right 4e-11
  vec   (a ti.Vector carried)              0.36 % off       0.36 % off (taichi-notes 1-4)
  tape  (vector rebuilt from a field tape) 0.36 % off       right 4e-11
dL/dy(0) is right in every variant; only dL/dp (which needs the vector's value) is off.
Not changed by advanced_optimization=False, cfg_optimization=False or opt_level=0.
One step's Jacobian with no dynamic loop around it is right on both (diffsim's per-step
Jacobians), which is what diffsim's discrete gradient uses on Quadrants."""
import sys

import diffsim

diffsim.init(backend=sys.argv[1] if len(sys.argv) > 1 else "quadrants")
from diffsim.backend import ti  # noqa: E402

N, h = 100, 0.01
P = ti.field(ti.f64, 1, needs_grad=True)
Y0 = ti.field(ti.f64, 2, needs_grad=True)
L = ti.field(ti.f64, (), needs_grad=True)
TP = ti.field(ti.f64, (N + 1, 2), needs_grad=True)


@ti.func
def rhs(y, p):
    return ti.Vector([y[1], -p * y[0]])


@ti.kernel
def scal(n: ti.i32):
    for _ in range(1):
        a0, a1 = Y0[0], Y0[1]
        for i in range(n):
            k = rhs([a0, a1], P[0])
            n0, n1 = a0 + h * k[0], a1 + h * k[1]
            a0, a1 = n0, n1
        L[None] += a0 * a0 + a1


@ti.kernel
def vec(n: ti.i32):
    for _ in range(1):
        y = ti.Vector([Y0[0], Y0[1]])
        for i in range(n):
            y = y + h * rhs(y, P[0])
        L[None] += y[0] * y[0] + y[1]


@ti.kernel
def tape(n: ti.i32):
    for _ in range(1):
        TP[0, 0], TP[0, 1] = Y0[0], Y0[1]
        for i in range(n):
            y = ti.Vector([TP[i, 0], TP[i, 1]])
            k = rhs(y, P[0])
            TP[i + 1, 0] = y[0] + h * k[0]
            TP[i + 1, 1] = y[1] + h * k[1]
        L[None] += TP[n, 0] ** 2 + TP[n, 1]


def loss(kern, p, dy=0.0):
    P[0], Y0[0], Y0[1], L[None] = p, 1.0 + dy, 0.5, 0.0
    kern(N)
    return L[None]


for name, kern in (("scal", scal), ("vec", vec), ("tape", tape)):
    p, e = 0.7, 1e-6
    P.grad.fill(0)
    Y0.grad.fill(0)
    TP.grad.fill(0)
    loss(kern, p)
    L.grad[None] = 1.0
    kern.grad(N)
    fp = (loss(kern, p + e) - loss(kern, p - e)) / (2 * e)
    fy = (loss(kern, p, e) - loss(kern, p, -e)) / (2 * e)
    print(f"{name}: dL/dp {P.grad[0]:.10f} (FD {fp:.10f}, rel {abs(P.grad[0] - fp) / abs(fp):.1e});"
          f" dL/dy0[0] rel {abs(Y0.grad[0] - fy) / abs(fy):.1e}")
