"""What each XLA:CPU formulation (layers/xla_cpu.py) and the chunked LM head + loss are worth:
the train step of a config timed with all of them on, each one off in turn, and all off.

Every variant is a `runs.benchmark_train` run (the same compile, warm-up and timed steps as
`--mode=train`, on the same synthetic batch from the same initial state), traced under its
`xla_cpu.Formulations`; "loss_chunks off" sets train.loss_chunk_size to 0 (the plain LM head
and loss). The cost of a variant is its median step time over the all-on one's, minus 1. Its
final loss is printed as a check: the formulations compute the same values, so the losses
agree to float rounding. greedy decoding's argmax is not in the train step (`--mode=decode`
runs it).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ml_collections import config_dict

from t5x_like.layers import xla_cpu
from t5x_like.tools.benchmarking import runs

# The switches that change the train step (argmax_reductions is decoding's).
TRAIN_STEP_SWITCHES = ("matmul_2d", "heads_major", "causal_split", "weight_grad_copy")
LOSS_CHUNKS = "loss_chunks"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One timed configuration: the formulations switched off (xla_cpu switches and/or
    LOSS_CHUNKS)."""

    name: str
    off: tuple[str, ...]

    def formulations(self) -> xla_cpu.Formulations:
        """The xla_cpu switches of this variant."""
        return xla_cpu.Formulations().without(*(n for n in self.off if n != LOSS_CHUNKS))

    def config(self, cfg: config_dict.ConfigDict) -> config_dict.ConfigDict:
        """`cfg`, with the plain LM head and loss if LOSS_CHUNKS is off."""
        cfg = copy.deepcopy(cfg)
        if LOSS_CHUNKS in self.off:
            cfg.train.loss_chunk_size = 0
        return cfg


def variants(cfg: config_dict.ConfigDict) -> list[Variant]:
    """All on, each formulation the config uses off in turn, all off. Loss chunks (and the
    weight-gradient copy inside them) count only where train.loss_chunk_size > 0."""
    chunked = (cfg.train.get("loss_chunk_size") or 0) > 0
    names = ([LOSS_CHUNKS] if chunked else []) + [
        n for n in TRAIN_STEP_SWITCHES if chunked or n != "weight_grad_copy"
    ]
    return [
        Variant("all on", ()),
        *(Variant(f"{name} off", (name,)) for name in names),
        Variant("all off", tuple(names)),
    ]


def benchmark_formulations(
    cfg: config_dict.ConfigDict, steps: int, warmup: int
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Times the train step of every variant (`steps` timed after `warmup` untimed ones)."""
    entries, first = [], None
    for variant in variants(cfg):
        with xla_cpu.using(variant.formulations()):
            run, _ = runs.benchmark_train(variant.config(cfg), steps, warmup)
        if first is None:
            first = run
        entries.append(
            {
                "name": variant.name,
                "switched_off": list(variant.off),
                "loss_chunk_size": variant.config(cfg).train.get("loss_chunk_size") or 0,
                "compile_s": run["compile_s"],
                "step_times_s": run["step_times_s"],
                "step_time": run["step_time"],
                "tokens_per_sec": run["tokens_per_sec"],
                "mfu": run["mfu"],
                "final_loss": run["final_loss"],
            }
        )
    base = entries[0]["step_time"]["median_s"]
    for entry in entries:
        entry["cost_vs_all_on"] = entry["step_time"]["median_s"] / base - 1.0
    result = {
        "mode": "formulations",
        "steps": steps,
        "warmup": warmup,
        **{k: first[k] for k in ("config", "tokens_per_step", "devices", "device_kind", "mesh")},
        "variants": entries,
    }
    rows = [
        ("model", None),
        ("config", result["config"]),
        ("tokens per step", result["tokens_per_step"]),
        ("mesh", f"{result['mesh']} ({result['devices']} x {result['device_kind']})"),
        ("train step", None),
        ("variant", f"median / min (ms) over {steps}, cost vs all on, final loss"),
    ]
    for entry in entries:
        stats = entry["step_time"]
        rows.append(
            (
                entry["name"],
                "{:.1f} / {:.1f}  {:+.1%}  loss {:.6g}".format(
                    1e3 * stats["median_s"],
                    1e3 * stats["min_s"],
                    entry["cost_vs_all_on"],
                    entry["final_loss"],
                ),
            )
        )
    return result, rows
