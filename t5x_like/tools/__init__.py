"""Tooling around the core: sweeps, benchmarks and profiles, plots; the core never imports it."""
