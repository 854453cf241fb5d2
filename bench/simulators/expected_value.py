"""The expected-value rule (method.md section 5).

Keep only answers that are exactly "0".."10", turn log probabilities into probabilities, renormalise
over those, and take the mean value.  No valid answer means EV 0 *and* an ``unparsed`` count, so the
fallback is visible in every result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bench.protocols import VALUE_STRINGS


@dataclass(frozen=True)
class ExpectedValue:
    value: float
    distribution: list[float] | None  # probabilities of 0..10, None when unparsed

    @property
    def parsed(self) -> bool:
        return self.distribution is not None


def expected_value_from_probabilities(probabilities: Mapping[str, float]) -> ExpectedValue:
    """EV over the valid value strings of a {string: probability} map, renormalised."""
    dist = [max(0.0, float(probabilities.get(v, 0.0))) for v in VALUE_STRINGS]
    total = sum(dist)
    if not total > 0 or math.isnan(total):
        return ExpectedValue(0.0, None)
    dist = [p / total for p in dist]
    return ExpectedValue(sum(i * p for i, p in enumerate(dist)), dist)


def expected_value_from_logprobs(top_logprobs: Mapping[str, float]) -> ExpectedValue:
    """EV from a {token: logprob} map; tokens that are not exactly "0".."10" are ignored."""
    probabilities: dict[str, float] = {}
    for token, logprob in top_logprobs.items():
        if token in VALUE_STRINGS and logprob is not None and not math.isnan(logprob):
            probabilities[token] = probabilities.get(token, 0.0) + math.exp(logprob)
    return expected_value_from_probabilities(probabilities)
