"""Which rows are cold (their user or item never occurs in the training split), and the cold-start split.

Coldness is decided on the raw ids against the training split's raw ids, not on the encoded ids: with
`min_freq` > 1 a rare but seen id also encodes to the OOV row, and it is not cold. Every split gets one boolean
column per declared role (`cold.user` for the schema's `user:`, `cold.item` for its `item:`); metrics then
report warm rows (no role cold), cold-user rows and cold-item rows (polyrec.metrics.report).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.encoders import as_strings
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError

ROLES = ("user", "item")


def role_columns(schema: Schema) -> dict[str, str]:
    """role -> raw column, for the roles the schema declares."""
    return {role: col for role in ROLES if (col := getattr(schema, role)) is not None}


def cold_columns(schema: Schema, train: pa.Table, table: pa.Table) -> dict[str, np.ndarray]:
    """role -> bool [N]: the row's id of that role is absent from the training split (vectorised set lookup)."""
    out = {}
    for role, col in role_columns(schema).items():
        known = pc.is_in(as_strings(table[col]), value_set=pc.unique(as_strings(train[col])))
        out[role] = ~np.asarray(known.to_numpy(zero_copy_only=False) if isinstance(known, pa.Array)
                                else known.combine_chunks().to_numpy(zero_copy_only=False), dtype=bool)
    return out


def cold_start_split(entities: Sequence[np.ndarray], ratios: tuple[float, float, float], fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Hold out a seeded `fraction` of each kind of entity (users, items: int codes [N] per kind) entirely.

    A held-out entity's rows never train. Half of each kind's held-out entities (rounded down) validate and the
    rest test: a row goes to test when any of its held-out entities is a test one, else to validation, so early
    stopping sees cold rows as the test does and neither half ever trains. The other rows split at random by
    `ratios`, so val and test also hold warm rows and every metric has both slices. Entities are drawn by a
    permutation of the unique codes, so the same (entities, fraction, seed) always hold out the same ones.
    """
    if not 0 < fraction < 1:
        raise PolyrecError(f"data.cold_fraction must be strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    n = len(entities[0])
    cold_val, cold_test = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for entity in entities:
        codes = np.unique(entity)
        n_cold = int(round(len(codes) * fraction))
        if n_cold < 2 or n_cold >= len(codes):
            raise PolyrecError(f"data.cold_fraction={fraction} of {len(codes)} entities holds out {n_cold}: the "
                               "cold-start split needs at least 2 held-out and 1 training entity")
        cold = rng.permutation(codes)[:n_cold]
        cold_val |= np.isin(entity, cold[: n_cold // 2])
        cold_test |= np.isin(entity, cold[n_cold // 2:])
    cold_val &= ~cold_test
    warm = np.flatnonzero(~(cold_val | cold_test))
    r = np.asarray(ratios, dtype=np.float64)
    perm = rng.permutation(warm)
    a, b = int(round(len(warm) * r[0])), int(round(len(warm) * (r[0] + r[1])))
    return {"train": np.sort(perm[:a]),
            "val": np.sort(np.r_[perm[a:b], np.flatnonzero(cold_val)]),
            "test": np.sort(np.r_[perm[b:], np.flatnonzero(cold_test)])}
