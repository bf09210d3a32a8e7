"""Figures (matplotlib): one module per scene kind, plus :mod:`.common` (save, pyplot,
loss curve) and :mod:`.hessian`.

Plot functions are functions of results: they take arrays and result objects that a
task computed beforehand, never a problem to simulate again. They return Figures, or
write files and return their paths. Never imported by kernels; the library never
switches the matplotlib backend (the CLI selects Agg).
"""
