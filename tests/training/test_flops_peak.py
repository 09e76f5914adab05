"""The MFU's peak FLOP/s: the datasheet table for known accelerators, a CPU peak measured once
per machine and dtype and then read from its cache, a configured one, and an MFU above 100%
reported as a measurement problem, never as a result (issue 21)."""

import json
import logging
import math
from types import SimpleNamespace

import jax
import pytest

from t5x_like.training import flops


def test_mfu_above_one_is_flagged_not_reported(caplog):
    ok = flops.mfu_metrics(tokens_per_sec=1000.0, flops_per_token=1e6, peak=4e9)
    assert ok == {"model_flops_per_sec": 1e9, "mfu": 0.25}
    with caplog.at_level(logging.WARNING):
        bad = flops.mfu_metrics(tokens_per_sec=1000.0, flops_per_token=1e6, peak=7.5e8)
        again = flops.mfu_metrics(tokens_per_sec=1000.0, flops_per_token=1e6, peak=7.5e8)
    assert "mfu" not in bad and bad["mfu_invalid"] == pytest.approx(1e9 / 7.5e8)
    assert bad["model_flops_per_sec"] == 1e9 and again == bad
    warnings = [r.getMessage() for r in caplog.records if "above 1 (100%)" in r.getMessage()]
    assert len(warnings) == 1, warnings  # Once per peak, not at every log line.
    assert "measurement problem, not a result" in warnings[0]
    assert "train.peak_flops" in warnings[0]


def test_known_device_kinds_use_the_table(monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("an accelerator's peak must come from the table")

    monkeypatch.setattr(flops, "measured_cpu_peak", no_measuring)
    cases = [
        ("gpu", "NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("gpu", "NVIDIA H100 80GB HBM3", "float32", 495e12),
        ("gpu", "NVIDIA H200", "bfloat16", 989e12),
        ("gpu", "NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("gpu", "NVIDIA A100-SXM4-80GB", "float32", 156e12),
        ("tpu", "TPU v4", "bfloat16", 275e12),
        ("tpu", "TPU v5 lite", "bfloat16", 197e12),
        ("tpu", "TPU v5p", "float32", 459e12),
        ("tpu", "TPU v6 lite", "bfloat16", 918e12),
    ]
    for platform, kind, dtype, per_chip in cases:
        devices = [SimpleNamespace(platform=platform, device_kind=kind)] * 4
        monkeypatch.setattr(jax, "devices", lambda devices=devices: devices)
        peak, source = flops.peak_flops(dtype)
        assert peak == 4 * per_chip, (kind, dtype)
        assert source.startswith("datasheet "), source
    devices = [SimpleNamespace(platform="gpu", device_kind="Some future chip")]
    monkeypatch.setattr(jax, "devices", lambda: devices)
    peak, source = flops.peak_flops("bfloat16")
    assert math.isnan(peak) and "unknown device kind" in source
    # A configured peak wins over everything.
    assert flops.peak_flops("bfloat16", given=1e15) == (1e15, "given by train.peak_flops")


def test_cpu_peak_is_measured_once_per_machine_and_dtype_then_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(flops, "_CPU_MEASURE_SECONDS", 0.05)
    measured = []
    real_measure = flops.measured_cpu_peak

    def counting_measure(dtype, shape, min_seconds):
        measured.append(dtype)
        return real_measure(dtype, shape, min_seconds=min_seconds)

    monkeypatch.setattr(flops, "measured_cpu_peak", counting_measure)
    cache = str(tmp_path / "cache" / "peak_flops.json")
    shape = (128, 128, 128)
    first, source = flops.peak_flops("float32", shape, cache_file=cache)
    assert measured == ["float32"] and first > 0
    assert "measured on this CPU now" in source and cache in source
    again, source = flops.peak_flops("float32", shape, cache_file=cache)
    assert again == first and measured == ["float32"]  # Read back, not re-measured.
    assert "cached in" in source and "delete the file to re-measure" in source
    other, _ = flops.peak_flops("bfloat16", shape, cache_file=cache)
    assert measured == ["float32", "bfloat16"] and other > 0
    entries = json.load(open(cache))
    assert len(entries) == 2
    key = next(k for k in entries if k.endswith("float32 | 128x128x128"))
    assert key.startswith(flops.machine_key()) and entries[key]["flops"] == first
    # The default file is under $T5X_LIKE_CACHE_DIR (else ~/.cache/t5x_like).
    monkeypatch.setenv(flops.CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert flops.cpu_peak_cache_file() == cache
    assert flops.peak_flops("float32", shape)[0] == first
    # An unreadable cache is measured again and rewritten, not an error.
    open(cache, "w").write("{not json")
    assert flops.peak_flops("float32", shape)[0] > 0 and len(measured) == 3
    assert len(json.load(open(cache))) == 1
