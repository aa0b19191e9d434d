"""The core layer: the gate, the gated classifier, hooks, atomic I/O, devices and the error type.

Nothing here imports another csg package; every other layer may import from here.
"""
