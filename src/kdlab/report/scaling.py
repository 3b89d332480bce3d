"""How an experiment's runs were scaled, as a report note: global batch, processes per run, learning-rate rule."""

from __future__ import annotations

from typing import Sequence

from kdlab.report.collect import RunEval


def scale_notes(runs: Sequence[RunEval]) -> list[str]:
    """How the runs were scaled: global batch, ranks and learning-rate rule (from their result.json)."""
    seen = sorted({(r.result["global_batch"], r.result.get("world_size"), r.result.get("lr_scaling"))
                   for r in runs if r.result.get("global_batch") is not None}, key=str)
    return [f"Global batch {batch} over {world} process(es) ({batch // max(1, world or 1)} per rank), learning-rate "
            f"rule lr_scaling={rule}" + (" (lr × batch / 256)" if rule == "linear" else " (lr as given)")
            for batch, world, rule in seen]
