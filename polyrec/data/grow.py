"""Encoders grown from a finished run's, for continual re-training (`polyrec train --init-from RUN_DIR`).

A warm-started run must read every input the old run knew exactly as the old run did, or the copied weights
would score old rows differently. So instead of refitting on the new training split:

- every vocabulary keeps its old tokens at their old ids (even tokens absent from the new data); the new
  training split's unseen tokens that reach the field's `min_freq` are appended after them, ordered as
  Vocabulary.fit orders tokens (frequent first, then by value), so they get fresh embedding rows;
- numeric scalers (fill value, shift, scale) and vector features' fill vectors are the old run's: refitting them on the new slice would move
  every old input, and a drift in the statistics is for the model to learn, not for the encoder to hide;
- the scenario vocabulary must not grow: per-scenario parameters (STAR's partitioned norm, M3oE's and
  SAPENet's scenario gates, scenario experts) have no well-defined "fresh" value that leaves old scenarios'
  scores unchanged, so a new scenario in the new training split is refused with one line.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.encoders import (Column, Encoders, HashedVocabulary, SequenceEncoder, Vocabulary, token_lists,
                                   as_strings)
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError

# the parts of a schema the old model's inputs and outputs depend on (derive/filter/time may change per slice)
COMPATIBLE_KEYS = ("features", "tasks", "scenario", "history")


def grow_vocabulary(vocab: Vocabulary | HashedVocabulary, values: Column, min_freq: int = 1
                    ) -> Vocabulary | HashedVocabulary:
    """`vocab` with the tokens of `values` it lacks (counted at least `min_freq` times) appended: old ids stay.
    A hashed vocabulary has nothing to grow (every id already has its bucket): it is kept as it is."""
    if isinstance(vocab, HashedVocabulary):
        return vocab
    counts = pc.value_counts(as_strings(values))
    if len(counts) == 0:
        return Vocabulary(list(vocab.tokens), vocab.reserved)
    vals, cnts = counts.field("values"), counts.field("counts").to_numpy()
    known = pa.array(list(vocab.reserved) + vocab.tokens, type=pa.string())
    fresh = ~pc.is_in(vals, value_set=known).to_numpy(zero_copy_only=False) & (cnts >= min_freq)
    new_vals = np.asarray(vals.to_pylist(), dtype=object)[fresh]
    new_cnts = cnts[fresh]
    order = np.lexsort((new_vals.astype(str), -new_cnts))  # frequent first, then by value (as Vocabulary.fit)
    return Vocabulary(list(vocab.tokens) + [str(v) for v in new_vals[order]], vocab.reserved)


def schema_differences(old: Schema, new: Schema) -> list[str]:
    """The compatibility-relevant schema parts in which `new` differs from `old` (empty: compatible)."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [k for k in COMPATIBLE_KEYS if a.get(k) != b.get(k)]


def grow_encoders(base: Encoders, schema: Schema, train: pa.Table) -> Encoders:
    """The old run's encoders extended by the new training split (see the module docstring)."""
    diff = schema_differences(base.schema, schema)
    if diff:
        raise PolyrecError(f"--init-from: the new data's schema differs from the old run's in {', '.join(diff)}; "
                           "a warm start needs the same features, tasks, scenario and histories.")
    vocabularies = {f.name: grow_vocabulary(base.vocabularies[f.name], train[f.source], f.min_freq)
                    for f in schema.categorical}
    sequences: dict[str, SequenceEncoder] = {}
    for f in schema.sequences:
        if f.vocab is not None:
            sequences[f.name] = SequenceEncoder(f, vocabularies[f.vocab])
        else:
            flat = pc.list_flatten(token_lists(train[f.source], f.sep))
            sequences[f.name] = SequenceEncoder(f, grow_vocabulary(base.sequences[f.name].vocab, flat, f.min_freq))
    scenario = base.scenario
    if schema.scenario is not None and base.scenario is not None:
        grown = grow_vocabulary(base.scenario, train[schema.scenario.source], 1)
        if grown.size != base.scenario.size:
            new = grown.tokens[len(base.scenario.tokens):]
            raise PolyrecError(f"--init-from: the new training data has scenario(s) the old run never saw "
                               f"({', '.join(map(repr, new[:5]))}{' ...' if len(new) > 5 else ''}); per-scenario "
                               "parameters cannot grow, so warm-start needs the same scenario set: drop those "
                               "rows or train from scratch.")
    return Encoders(schema=schema, vocabularies=vocabularies, scalers=dict(base.scalers), sequences=sequences,
                    scenario=scenario, vectors=dict(base.vectors))

