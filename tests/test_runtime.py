"""Runtime: one init, no-op on repeat, clear error after a re-init (in a subprocess)."""
import subprocess
import sys

import pytest

import diffsim
from diffsim import runtime
from diffsim.errors import DiffsimError


def test_same_settings_is_a_no_op(runtime):
    assert diffsim.init("cpu", "f64") is runtime
    assert runtime.arch == "cpu" and runtime.precision == "f64"


def test_bad_settings_name_the_argument():
    with pytest.raises(DiffsimError, match="arch='gpu'"):
        diffsim.init("gpu")
    with pytest.raises(DiffsimError, match="precision='f16'"):
        diffsim.init("cpu", "f16")


def test_segments_cover_the_horizon():
    for n in (1, 499, 500, 501, 12345):
        segs = runtime.segments(n)
        assert sum(k for _, k in segs) == n
        assert max(k for _, k in segs) <= runtime.MAX_FUSED_STEPS
        assert [s for s, _ in segs] == [sum(k for _, k in segs[:i]) for i in range(len(segs))]


def test_use_after_reinit_raises_instead_of_crashing():
    code = """
import diffsim
from diffsim.systems.projectile import Projectile
diffsim.init('cpu', 'f64')
p = Projectile(2, steps=20)
p.forward('range', strict=False)
diffsim.init('cpu', 'f32')
try:
    p.forward('range', strict=False)
except diffsim.RuntimeStateError as e:
    print('raised:', e)
q = Projectile(2, steps=20)
print('f32 ok', q.forward('range', strict=False) > 0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "raised:" in out.stdout and "init()" in out.stdout
    assert "f32 ok True" in out.stdout


def test_auto_arch_falls_back_to_a_working_backend():
    code = "import diffsim; r = diffsim.init('auto'); print(r.arch)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] in ("cpu", "cuda")
