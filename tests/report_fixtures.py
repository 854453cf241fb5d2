"""Synthetic finished run folders for leaderboard, card and viewer tests (no model, no pipeline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.aggregate import aggregate
from bench.records import Explanation, Score, SequenceSimulation, Simulation, UnitId, UnitResult, Usage

PRIMARY = "correlation/top_and_random"


def unit_result(
    unit: UnitId,
    value: float,
    control: float,
    explanation: str = "words about rain",
    fingerprint: str = "fp-1",
    tokens: list[str] | None = None,
    dollars: float = 0.0,
) -> UnitResult:
    tokens = tokens or ["The", " rain", " fell", "."]
    seq = SequenceSimulation(
        tokens=tokens,
        expected=[0.0, 8.0, 1.0, 0.0][: len(tokens)] + [0.0] * (len(tokens) - 4),
        true_activations=[0.1, 3.5, 0.4, -0.2][: len(tokens)] + [0.0] * (len(tokens) - 4),
    )
    return UnitResult(
        unit=unit,
        status="ok",
        explanation=Explanation(
            text=explanation,
            explainer="token_list",
            usage=Usage(calls=1, input_tokens=100, output_tokens=10, dollars=dollars),
        ),
        simulation=Simulation(sequences=[seq], simulator="proxy_lexical", estimator="proxy/lexical"),
        scores={
            PRIMARY: Score(PRIMARY, value),
            f"control/{PRIMARY}": Score(f"control/{PRIMARY}", control),
            f"specificity/{PRIMARY}": Score(f"specificity/{PRIMARY}", value - control),
            "rsquared": Score("rsquared", float("nan"), "calibration failed: constant simulation"),
        },
        extras={
            "provenance": {"subject": {"model": "smollm2-135m-instruct", "revision": None}, "excerpts": fingerprint},
            "control": {"explanations": ["other unit's words"], "scores": [control]},
        },
    )


def make_run(
    root: Path,
    name: str,
    values: list[float],
    controls: list[float],
    explainer: str = "token_list",
    prompt: str = "v1",
    layers: list[int] | None = None,
    fingerprint: str = "fp-1",
    extra_config: dict[str, Any] | None = None,
    explanation: str = "words about rain",
    tokens: list[str] | None = None,
    dollars: float = 0.0,
    train: bool = True,
) -> Path:
    """A finished run folder with one result per value (units L{layer}/{i})."""
    layers = layers or [15] * len(values)
    results = [
        unit_result(UnitId(layer, i), v, c, explanation, fingerprint, tokens, dollars)
        for i, (layer, v, c) in enumerate(zip(layers, values, controls, strict=True))
    ]
    d = root / name
    d.mkdir(parents=True)
    config = {
        "subject": {"model_id": "smollm2-135m-instruct", "name": "smollm2_135m", "version": 1, "revision": None},
        "explainer": {"_target_": f"x.{explainer}", "name": explainer, "version": 1, "top_n": 5},
        "prompt": {"name": prompt, "version": 1},
        "simulator": {"_target_": "x.Lexical", "name": "proxy_lexical", "version": 1},
        "scorer": {"correlation": {"_target_": "x.Corr", "version": 1}},
        "output_dir": str(root),
        **(extra_config or {}),
    }
    (d / "config.json").write_text(json.dumps(config))
    summary = aggregate(results, resamples=200, confidence=0.95, seed=0)
    (d / "summary.json").write_text(json.dumps({k: (None if v != v else v) for k, v in summary.items()}))
    (d / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in results))
    if train:
        with (d / "train_excerpts.jsonl").open("w") as fh:
            for r in results:
                rec = {"tokens": tokens or ["A", " wet", " day"], "activations": [0.0, 4.0, 1.0]}
                fh.write(json.dumps({"unit": r.unit.key, "top": [rec], "random": [rec]}) + "\n")
    return d
