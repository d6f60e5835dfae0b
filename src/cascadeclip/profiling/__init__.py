"""Profiling: measuring what the model costs (parameters, FLOPs, time, frames per second, memory) and on what machine.

`cascade-clip bench` reports these for a configuration; `benchmarks/efficiency.py` compares them across precisions
and against a bare ViT-B/16.
"""
