"""Physical systems: each module owns its Taichi fields and kernels."""
