"""Beam runner options and counters shared by the two Beam steps (clean, pretrain-data):
the caller's flags pass through unchanged (``--runner=DataflowRunner ...``), with the
local DirectRunner mode as the default."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

# Measured on the bundled sample (~2.7 MB, 14,780 records; 2 cores shared with other
# jobs), 11-12 alternating runs each: in_memory median 20.8 s (18.6-22.1), two
# multi_processing workers median 25.5 s (15.9-30.1). Two workers only win on an idle
# machine; with other load their start-up and per-process Kiwi model cost more than
# they gain. Pass --direct_running_mode=multi_processing for large local inputs.
DEFAULT_DIRECT_OPTIONS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def pipeline_args(beam_options: list[str] | None) -> list[str]:
    """The caller's Beam flags unchanged, plus the local default runner mode when the
    caller picked no runner (a ``--runner=DataflowRunner ...`` list passes as is)."""
    args = list(beam_options or [])
    names = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--runner" not in names:
        args = [a for a in DEFAULT_DIRECT_OPTIONS if a.split("=", 1)[0] not in names] + args
    return args


def pipeline_options(beam_options: list[str] | None) -> PipelineOptions:
    return PipelineOptions(pipeline_args(beam_options))


def beam_counters(result, namespace: str) -> dict[str, int]:
    """Committed Beam counters of a finished pipeline (for logs; stats.json does not use them)."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or 0)
    return totals
