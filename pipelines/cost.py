"""What a Vertex run will cost, before it is submitted: an ESTIMATE.

Per step with resources: the machine and accelerator, the expected duration and the price
from a dated price table (``configs/prices/vertex-us-central1.yaml``, or
``vertex.price_table``). Pretraining's duration is tokens / throughput, with tokens =
sum over phases of steps x batch x sequence length, and throughput either
``pipeline.resources.pretrain.tokens_per_second`` or derived from the model's training
FLOPs per token (``korlm.pretrain.distribute.model_flops_per_token``), the accelerator's
peak (``PEAK_FLOPS``) and an ASSUMED model-FLOPs utilisation
(``pipeline.resources.pretrain.assumed_mfu``, default 0.35): no korlm throughput has been
measured on a real accelerator yet. Other steps are priced only when their
``expected_hours`` and ``machine_type`` are given; Dataflow (clean, pretrain-data) is not
estimated.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import yaml

from korlm.config import Config, StepResources
from korlm.errors import KorlmError

DEFAULT_PRICE_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "configs", "prices", "vertex-us-central1.yaml")
# Vertex accelerator type -> (korlm.pretrain.distribute.PEAK_FLOPS key, accelerators per chip)
PEAK_KEYS = {"TPU_V5_LITEPOD": ("TPU v5e", 1), "TPU_V3": ("TPU v3", 2), "TPU_V2": ("TPU v2", 2),
             "TPU_V4_POD": ("TPU v4", 1), "NVIDIA_L4": ("L4", 1), "NVIDIA_TESLA_A100": ("A100", 1),
             "NVIDIA_A100_80GB": ("A100", 1), "NVIDIA_H100_80GB": ("H100 SXM", 1),
             "NVIDIA_H200_141GB": ("H200", 1), "NVIDIA_TESLA_T4": ("T4", 1),
             "NVIDIA_TESLA_V100": ("V100 SXM2", 1)}
DTYPES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16", "float32": "float32"}


@dataclasses.dataclass
class StepCost:
    step: str
    machine: str
    hours: float | None
    usd_per_hour: float | None
    basis: str  # how the duration was found

    @property
    def usd(self) -> float | None:
        if self.hours is None or self.usd_per_hour is None:
            return None
        return self.hours * self.usd_per_hour


def load_price_table(path: str | None) -> dict[str, Any]:
    path = path or DEFAULT_PRICE_TABLE
    try:
        with open(path, encoding="utf-8") as f:
            table = yaml.safe_load(f)
    except OSError as exc:
        raise KorlmError(f"vertex.price_table {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError:
        raise KorlmError(f"vertex.price_table {path}: not valid YAML") from None
    if not isinstance(table, dict) or not isinstance(table.get("machines", {}), dict) \
            or not isinstance(table.get("accelerators", {}), dict) or "read_on" not in table:
        raise KorlmError(f"vertex.price_table {path}: needs read_on, machines and accelerators "
                         "(see configs/prices/vertex-us-central1.yaml)")
    table.setdefault("machines", {})
    table.setdefault("accelerators", {})
    shown = os.path.relpath(path)
    table["path"] = path if shown.startswith("..") else shown
    return table


def hourly_price(res: StepResources, table: dict[str, Any]) -> float | None:
    """Machine + accelerators per hour, or None when the table lacks either."""
    if res.machine_type:
        if res.machine_type not in table["machines"]:
            return None
        price = float(table["machines"][res.machine_type])
    elif res.accelerator_type:
        price = 0.0  # a plain task: the VM Vertex picks for its cpu/memory is not counted
    else:
        return None
    if res.accelerator_type:
        unit = table["accelerators"].get(res.accelerator_type)
        if unit is None:
            return None
        price += float(unit) * res.accelerator_count
    return price


def pretrain_phases(conf: Config) -> list[tuple[int, int, int]]:
    """(steps, global batch, sequence length) of each pretraining phase."""
    pt = conf.pretrain
    if pt.phases:
        return [(p.steps, p.batch_size or pt.batch_size, p.max_seq_length) for p in pt.phases]
    return [(pt.steps, pt.batch_size, pt.max_seq_length or conf.pretrain_data.max_seq_length)]


def pretrain_tokens(conf: Config) -> int:
    return sum(steps * batch * seq for steps, batch, seq in pretrain_phases(conf))


def _dtype(precision: str, accelerator_type: str) -> str:
    if precision in DTYPES:
        return DTYPES[precision]
    return "float16" if accelerator_type in ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100") else "bfloat16"


def pretrain_hours(conf: Config, res: StepResources) -> tuple[float | None, str]:
    """Expected pretraining hours and how they were found."""
    tokens = pretrain_tokens(conf)
    if res.tokens_per_second:
        return tokens / res.tokens_per_second / 3600, f"{tokens:.3g} tokens / {res.tokens_per_second:.4g} tok/s " \
                                                      "(configured)"
    if not res.accelerator_type or res.accelerator_type not in PEAK_KEYS:
        return None, "no accelerator with a known peak: set tokens_per_second"
    from korlm.pretrain.distribute import PEAK_FLOPS, model_flops_per_token

    kind, per_chip = PEAK_KEYS[res.accelerator_type]
    dtype = _dtype(conf.pretrain.precision, res.accelerator_type)
    peak = PEAK_FLOPS[kind][dtype]
    if not peak:
        return None, f"{kind} has no {dtype} peak"
    chips = res.accelerator_count / per_chip
    pt = conf.pretrain
    seconds = 0.0
    for steps, batch, seq in pretrain_phases(conf):
        predictions = None
        if pt.model in ("bert", "roberta"):
            predictions = pt.max_predictions or math.ceil(seq * pt.mask_rate)
        if pt.model == "electra":  # generator + discriminator
            from korlm.pretrain.electra import flops_per_token

            predictions = pt.max_predictions or math.ceil(seq * pt.mask_rate)
            flops = flops_per_token(pt.size, conf.vocab.vocab_size, seq, predictions)
        else:
            flops = model_flops_per_token(pt.model, pt.size, conf.vocab.vocab_size, seq,
                                          mlm_predictions=predictions)
        seconds += steps * batch * seq * flops / (res.assumed_mfu * peak * chips)
    rate = tokens / seconds
    return seconds / 3600, (f"{tokens:.3g} tokens / {rate:,.0f} tok/s (ASSUMED {res.assumed_mfu:.0%} MFU of "
                            f"{chips:g} x {kind} {dtype} peak)")


def estimate(conf: Config, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per step and in total: machine, hours, USD/hour and USD (an estimate)."""
    table = table or load_price_table(conf.vertex.price_table)
    rows = []
    for step, res in conf.pipeline.resources.items():
        machine = res.machine_type or f"(Vertex picks: cpu {res.cpu or '-'}, memory {res.memory or '-'})"
        if res.accelerator_type:
            machine += f" + {res.accelerator_count} x {res.accelerator_type}"
        if res.tpu_topology:
            machine += f" ({res.tpu_topology})"
        if step == "pretrain":
            hours, basis = pretrain_hours(conf, res)
        elif res.expected_hours:
            hours, basis = res.expected_hours, "expected_hours (configured)"
        elif step in ("clean", "pretrain_data") and conf.vertex.dataflow.enabled:
            hours, basis = None, "runs on Dataflow: not estimated"
        else:
            hours, basis = None, "no duration model: set expected_hours"
        price = hourly_price(res, table)
        if price is None and hours is not None:
            basis += "; no price (needs machine_type in the price table)"
        elif price is not None and not res.machine_type:
            basis += "; accelerators only (the VM Vertex picks is not counted)"
        rows.append(StepCost(step, machine, hours, price, basis))
    priced = [r.usd for r in rows if r.usd is not None]
    total = sum(priced) + float(table.get("pipeline_run") or 0.0)
    return {
        "estimate": True,
        "price_table": table["path"], "prices_read_on": str(table["read_on"]),
        "prices_checked": bool(table.get("checked", False)), "region": table.get("region"),
        "source": table.get("source", "(no source given)"),
        "currency": table.get("currency", "USD"),
        "steps": [{"step": r.step, "machine": r.machine, "hours": r.hours, "usd_per_hour": r.usd_per_hour,
                   "usd": r.usd, "basis": r.basis} for r in rows],
        "pipeline_run_usd": float(table.get("pipeline_run") or 0.0),
        "total_usd": total,
        "unpriced_steps": [r.step for r in rows if r.usd is None],
    }


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def format_table(est: dict[str, Any]) -> str:
    """The estimate as a terminal table."""
    header = ("step", "machine", "hours", "USD/h", "USD", "duration from")
    rows = [(s["step"], s["machine"], _fmt(s["hours"], "{:,.1f}"), _fmt(s["usd_per_hour"], "{:,.2f}"),
             _fmt(s["usd"], "{:,.2f}"), s["basis"]) for s in est["steps"]]
    rows.append(("pipeline run", "", "", "", f"{est['pipeline_run_usd']:,.2f}", "per PipelineJob"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(w) if i in (0, 1, 5) else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    unpriced = f" (not counted: {', '.join(est['unpriced_steps'])})" if est["unpriced_steps"] else ""
    checked = "" if est["prices_checked"] else \
        f"; NOT checked against {est['source']} (see the table's header)"
    return "\n".join([
        f"ESTIMATED cost of this run: an estimate, not a quote ({est['currency']}, {est['region']})",
        f"prices: {est['price_table']}, read {est['prices_read_on']}{checked}",
        line(header), rule, *(line(r) for r in rows), rule,
        f"total: {est['currency']} {est['total_usd']:,.2f}{unpriced}",
    ])
