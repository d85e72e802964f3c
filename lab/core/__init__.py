"""The core of speculative decoding, free of sockets, kernels and simulators.

Acceptance math and the payload codec (`spec`), per-node decoding state and the
one speculative cycle (`decoding`, `cycle`), strategies (`strategies`) and the
wire protocol (`protocol`).  Imports nothing from `lab.sim`, the orchestration
modules in `lab/`, or `netns/` (tests/unit/test_layers.py checks it).
"""
