"""Probe for taichi-notes 33: reverse mode through a fused time loop, AD vs central FD.

    python docs/probes/quadrants_vector_local.py {taichi|quadrants} {scalar|vector|vector_out}

y' = -p·y by explicit Euler, 200 steps of h = 0.01 (h read from a field each step),
p = 0.7 read inside the loop, y(0) = 1.5; loss = y(T); prints dL/dp by AD and by FD.
scalar: scalar locals only. vector: the carried scalar packed into a local vector first
(yv = ti.Vector([a0])) as diffsim's ODE kernel does. vector_out: only the result is a
vector. Measured (taichi 1.7.4 / quadrants 1.3.3): all right on Taichi; on Quadrants
"vector" gives -0.3996 instead of -0.7413.
"""
import sys

name, variant = sys.argv[1], sys.argv[2]
if name == "taichi":
    import taichi as ti
    ti.init(arch=ti.cpu, default_fp=ti.f64, ad_stack_size=2048, log_level=ti.WARN)
else:
    import quadrants as ti
    ti.init(arch=ti.cpu, default_fp=ti.f64, ad_stack_size=2048,
            ad_stack_experimental_enabled=True, log_level=ti.WARN)

N, H = 200, 0.01
P = ti.field(ti.f64, (1, 1), needs_grad=True)
S = ti.field(ti.f64, (2, 1), needs_grad=True)
L = ti.field(ti.f64, (), needs_grad=True)
Hf = ti.field(ti.f64, N)


@ti.kernel
def segment(cnt: ti.i32):
    for b in range(1):
        a0 = S[0, b]
        for i in range(cnt):
            p, h = P[b, 0], Hf[i]
            yn = 0.0
            if ti.static(variant == "vector"):
                yv = ti.Vector([a0])
                yn = ti.Vector([yv[0] - h * p * yv[0]])[0]
            elif ti.static(variant == "vector_out"):
                yn = ti.Vector([a0 - h * p * a0])[0]
            else:
                yn = a0 - h * p * a0
            a0 = yn
        S[1, b] = a0


@ti.kernel
def finish():
    L[None] += S[1, 0]


def loss(p):
    P[0, 0], S[0, 0], L[None] = p, 1.5, 0.0
    segment(N)
    finish()
    return L[None]


for i in range(N):
    Hf[i] = H
P[0, 0], S[0, 0] = 0.7, 1.5
with ti.ad.Tape(loss=L):
    segment(N)
    finish()
ad = P.grad[0, 0]
e = 1e-6
print(f"{name} {variant}: AD {ad:.10f}  FD {(loss(0.7 + e) - loss(0.7 - e)) / (2 * e):.10f}")
