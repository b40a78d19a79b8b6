"""Settings TensorFlow reads from the environment when it loads: import this module before
TensorFlow (the scripts do it first thing).

TensorFlow's default CPU allocator page-faults every large buffer afresh; its BFC allocator
reuses them (train steps and reader decoding run several times faster, BENCHMARKS.md). A value
the user set in the environment wins.
"""
import os

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
