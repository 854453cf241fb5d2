"""Interleaved train / calibration / valid / test splits (method.md section 2).

Interleaving (``top[i::4]``) lets every split see the whole ranking of top excerpts instead of the
train split taking all the strongest ones.
"""

from __future__ import annotations

from bench.errors import UserError
from bench.records import SplitRecords, Splits, UnitRecord

TOP_STRIDE = 4
RANDOM_STRIDE = 3


def required_counts(n: int) -> tuple[int, int]:
    """(top, random) records a unit needs so that every split gets ``n`` of each half."""
    return TOP_STRIDE * n, RANDOM_STRIDE * n


def make_splits(record: UnitRecord, n: int) -> Splits:
    """Split a unit's records; too few records is an error naming the unit and the counts."""
    if n < 1:
        raise UserError(f"splits: examples per split must be >= 1, got {n}")
    need_top, need_random = required_counts(n)
    top, random = record.top, record.random
    if len(top) < need_top or len(random) < need_random:
        raise UserError(
            f"unit {record.unit.key} has {len(top)} top and {len(random)} random records; "
            f"{n} examples per split need at least {need_top} top and {need_random} random "
            "(mine more: raise mining.top_k / mining.random_k, or lower units.examples_per_split)"
        )
    return Splits(
        train=SplitRecords(top=top[0::4][:n], random=[]),
        calibration=SplitRecords(top=top[1::4][:n], random=random[0::3][:n]),
        valid=SplitRecords(top=top[2::4][:n], random=random[1::3][:n]),
        test=SplitRecords(top=top[3::4][:n], random=random[2::3][:n]),
    )
