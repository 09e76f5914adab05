"""Benchmarks of a config on synthetic data: compile time, step time, tokens/s, MFU, memory.

    harness.py         the experiment, synthetic batches, the compiled train step and what
                       XLA reports about it (memory and cost analysis), model FLOPs
    runs.py            train (timed steps) and dryrun (ahead-of-time compile for a mesh: does
                       it fit?)
    decode.py          KV-cache generation throughput: prefill and per-step decoding
    formulations.py    the train step with each XLA:CPU formulation (layers/xla_cpu.py) switched
                       off in turn: what each one buys
    profile.py         a jax.profiler trace of train steps, broken down per model part
    report.py          pure arithmetic (step-time statistics, tokens/s, MFU, memory verdict)
                       and the printed table

`experiments/benchmark.py` is the command-line front end; `configs/benchmark.py` the sizes.
"""
