"""`attnscope bench tui`: prompt-to-heatmap latency and heatmap cursor repaint time (a benchmark, not a test).

Prompt-to-heatmap: from handing a prompt to the engine to the heatmap holding its data (engine round trip,
`sae.analysis.dfa.prompt_features`, `Heatmap.set_data`). Cursor repaint: one arrow key to the new rows' strips rendered
(`move_to` plus `render_line` for every visible line, as the compositor asks after a move).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

BENCH_TEXT = (
    "def read_config(path):\n    with open(path) as fh:\n        return json.load(fh)\n"
    "When Mary and John went to the store, John gave a drink to Mary. "
    "import os, sys\nclass Loader(object):\n    def __init__(self, root):\n        self.root = root\n"
) * 8


def prompt_of(model: Any, n_tokens: int) -> str:
    """A prompt that tokenises to `n_tokens` tokens (BOS included) on `model`."""
    ids = model.encode(BENCH_TEXT)[: max(1, n_tokens - 1)]
    return model.tokenizer.decode(ids)


async def measure(engine: Any, n_tokens: int, repeats: int) -> dict[str, Any]:
    from textual.app import App

    from workbench.widgets.heatmap import Heatmap, HeatmapData

    info = await engine.open()
    layer = info.sae_layers[0]
    prompt = prompt_of(engine._model, n_tokens)  # noqa: SLF001 - the bench reads the model it benchmarks
    result: dict[str, Any] = {"model": info.model, "layer": layer}

    class Bench(App):
        def compose(self):
            yield Heatmap(id="hm")

    async with Bench().run_test(size=(120, 40)) as pilot:
        hm = pilot.app.query_one(Heatmap)
        hm.focus()
        await engine.features(prompt + " warm", layer)  # warm-up: first pass allocates
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            res = await engine.features(prompt if i % 2 else prompt + " ", layer)
            hm.set_data(HeatmapData(res.tokens, res.columns, res.values))
            for y in range(hm.scrollable_content_region.height):
                hm.render_line(y)
            times.append((time.perf_counter() - t0) * 1000)
        result["tokens"] = len(res.tokens)
        result["columns"] = len(res.columns)
        result["prompt_to_heatmap_ms"] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
        await pilot.pause()
        moves = []
        keys = ["down", "right", "up", "left"]
        for i in range(repeats * 5):
            t0 = time.perf_counter()
            hm.action_move(*{"down": (1, 0), "up": (-1, 0), "left": (0, -1), "right": (0, 1)}[keys[i % 4]])
            for y in range(hm.scrollable_content_region.height):
                hm.render_line(y)
            moves.append((time.perf_counter() - t0) * 1000)
        result["cursor_repaint_ms"] = {"median": statistics.median(moves), "min": min(moves), "max": max(moves)}
    result["targets"] = {"prompt_to_heatmap_ms_median": 100, "cursor_repaint_ms_median": 16}
    return result


def main(args: argparse.Namespace) -> int:
    from sae.cli.common import UsageError
    from workbench.engine import Engine

    if args.tokens < 2 or args.repeats < 1:
        raise UsageError("--tokens must be >= 2 and --repeats >= 1")
    engine = Engine(args.model, args.saes, device=args.device, dtype=args.dtype)
    try:
        result = asyncio.run(measure(engine, args.tokens, args.repeats))
    finally:
        engine.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        p, c = result["prompt_to_heatmap_ms"], result["cursor_repaint_ms"]
        print(f"model {result['model']} layer {result['layer']}: {result['tokens']} tokens x {result['columns']} features")
        print(f"prompt -> heatmap  median {p['median']:.1f} ms  (min {p['min']:.1f}, max {p['max']:.1f}; target < 100)")
        print(f"cursor repaint     median {c['median']:.2f} ms  (min {c['min']:.2f}, max {c['max']:.2f}; target < 16)")
    return 0
