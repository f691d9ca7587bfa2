"""Request encoding with one index over all of a bundle's vocabularies, built once at load.

`Encoders.encode` (training, `polyrec predict`) looks each column up with `pyarrow.compute.index_in`, which
hashes that column's whole vocabulary on every call, and pays some ten arrow/numpy calls per column: for a
request of a few hundred rows that fixed cost per column, times every categorical feature, the scenario and
each sequence, was the largest part of the server's time outside the model. `RequestEncoder` gives the same
arrays with one pass for all of them:
  - at load, every token of every vocabulary (categorical features, the scenario, sequence tokens) gets a
    64-bit hash of (field, UTF-8 bytes), placed once in an open-addressing hash table (numpy arrays);
  - per request, each column is put in the training canonical string form (`as_strings`: ints as decimals,
    integral floats as ints, null as "<NA>") and reduced to its distinct values (a context feature repeated
    for every candidate is looked up once); all of them (and the flattened sequence tokens) are joined into
    one arrow string array, its bytes hashed vectorised from the arrow buffers (no Python object per value)
    and probed for in the table, all values at once (one vectorised round per probe step). A hit is confirmed
    by comparing field, length and bytes, so a hash collision can never give a wrong id (two tokens sharing a
    hash at load, or a hashed vocabulary (`hash_buckets`, no tokens to index): `Encoders.encode` is used instead).
Measured (benchmarks in docs/results/serving): 500 ML-1M rows 0.93-1.1 -> 0.59 ms, 100 rows 0.82 -> 0.41-0.45 ms.
tests/test_serving.py checks that the ids equal `Encoders.encode`'s on mixed inputs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.encoders import (EncodedSplit, Encoders, HashedVocabulary, Vocabulary, token_lists, as_strings,
                                   require_columns)

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets [n + 1] (int64, into the data buffer) and bytes of a pa.string() array, without copies."""
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(arr) + 1, offset=4 * arr.offset).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _byte_words(offsets: np.ndarray, data: np.ndarray, width: int) -> np.ndarray:
    """Strings (offsets, bytes; none longer than `width`, a multiple of 8) -> uint64 words [n, width // 8],
    zero-padded. A scatter over the bytes actually present, so short strings in a wide row cost little."""
    n = len(offsets) - 1
    out = np.zeros(n * width, np.uint8)
    start, end = int(offsets[0]), int(offsets[-1])
    if end > start:
        shift = np.repeat(np.arange(n, dtype=np.int64) * width - offsets[:-1], np.diff(offsets))
        out[np.arange(start, end) + shift] = data[start:end]
    return out.view(np.uint64).reshape(n, width // 8)


def _hash(words: np.ndarray, lengths: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of (field, length, words): multiply-xorshift mixing (uint64 arithmetic wraps)."""
    h = (fields.astype(np.uint64) * _M3) ^ (lengths.astype(np.uint64) * _M1)
    for j in range(words.shape[1]):
        h = (h ^ words[:, j]) * _M2
        h ^= h >> np.uint64(31)
    return h


def _hash_table(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """An open-addressing table (linear probing, load <= 1/2) of distinct hashes: slot hashes, the token in each
    slot (-1 = empty) and the longest probe any token needs. Built vectorised, one round per probe step."""
    size = 8
    while size < 2 * len(hashes):
        size *= 2
    shift = np.uint64(64 - int(np.log2(size)))
    table_hash = np.zeros(size, np.uint64)
    table_token = np.full(size, -1, np.int64)
    pending = np.arange(len(hashes))
    step = 0
    while len(pending):
        slot = ((hashes[pending] >> shift).astype(np.int64) + step) & (size - 1)
        free = table_token[slot] < 0
        _, first = np.unique(slot[free], return_index=True)  # one token per free slot this round
        won = np.flatnonzero(free)[first]
        table_hash[slot[won]], table_token[slot[won]] = hashes[pending[won]], pending[won]
        pending = np.delete(pending, won)
        step += 1
    return table_hash, table_token, max(step, 1)


def _canonical(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The training canonical string form (`as_strings`) as one pa.string() array without nulls."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not (pa.types.is_string(values.type) and values.null_count == 0):
        values = as_strings(values)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not pa.types.is_string(values.type):
            values = pc.cast(values, pa.string())
    return values


class RequestEncoder:
    """`Encoders.encode(table, with_labels=False)` for served requests, with one combined vocabulary index
    (see the module docstring). No user group ids: serving computes no gAUC."""

    def __init__(self, encoders: Encoders) -> None:
        self.encoders = encoders
        s = encoders.schema
        self.cat = [(f.source, encoders.vocabularies[f.name]) for f in s.categorical]
        self.scenario = (s.scenario.source, encoders.scenario) if s.scenario is not None else None
        self.seqs = [(f, encoders.sequences[f.name]) for f in s.sequences]
        vocabs: list[Vocabulary] = [v for _, v in self.cat]
        vocabs += [self.scenario[1]] if self.scenario else []
        vocabs += [e.vocab for _, e in self.seqs]
        self.columns = [c for c in s.input_columns() if c != s.user]
        if any(isinstance(v, HashedVocabulary) for v in vocabs):  # no tokens to index: Encoders.encode hashes
            self.usable = False
            return
        self.first = np.array([len(v.reserved) for v in vocabs], np.int64)  # id of each field's first token
        self.oov = np.array([v.oov_id for v in vocabs], np.int32)
        tokens = pa.array([t for v in vocabs for t in v.tokens], type=pa.string())
        field = np.repeat(np.arange(len(vocabs)), [len(v.tokens) for v in vocabs])
        offsets, data = _string_buffers(tokens)
        lengths = np.diff(offsets)
        self.width = max(8, -(-int(lengths.max(initial=0)) // 8) * 8)
        words = _byte_words(offsets, data, self.width)
        hashes = _hash(words, lengths, field)
        self.words, self.lengths, self.field = words, lengths, field
        self.table_hash, self.table_token, self.probes = _hash_table(hashes)
        self.shift = np.uint64(64 - int(np.log2(len(self.table_hash))))
        self.local = np.arange(len(field)) - np.repeat(np.cumsum([0] + [len(v.tokens) for v in vocabs])[:-1],
                                                       [len(v.tokens) for v in vocabs])  # index within the field
        self.usable = len(hashes) > 0 and len(np.unique(hashes)) == len(hashes)

    def lookup(self, strings: pa.Array, fields: np.ndarray) -> np.ndarray:
        """Ids of canonical strings (a pa.string() array without nulls), `fields[i]` naming each one's field."""
        offsets, data = _string_buffers(strings)
        lengths = np.diff(offsets)
        long = lengths > self.width  # longer than every token: no match; blanked so the scatter stays in its row
        if long.any():
            strings = pc.if_else(pa.array(long), pa.scalar("", pa.string()), strings)
            offsets, data = _string_buffers(strings)
        words = _byte_words(offsets, data, self.width)
        h = _hash(words, np.diff(offsets), fields)
        tok = np.full(len(h), -1, np.int64)
        home = (h >> self.shift).astype(np.int64)
        active = np.arange(len(h))
        mask = len(self.table_hash) - 1
        for step in range(self.probes):  # linear probing, all values at once; most are found at step 0
            slot = (home[active] + step) & mask
            found = self.table_hash[slot] == h[active]
            tok[active[found]] = self.table_token[slot[found]]
            active = active[~found & (self.table_token[slot] >= 0)]  # an empty slot ends the probe: absent
            if not len(active):
                break
        t = np.maximum(tok, 0)
        hit = ((tok >= 0) & (self.field[t] == fields) & (self.lengths[t] == lengths) & ~long
               & (self.words[t] == words).all(axis=1))
        return np.where(hit, self.local[t] + self.first[fields], self.oov[fields]).astype(np.int32)

    def lookup_columns(self, parts: list[pa.Array]) -> list[np.ndarray]:
        """Ids of each field's canonical strings. Each column is first reduced to its distinct values (arrow's
        dictionary_encode, a hash in C): a context feature repeated for every candidate is looked up once."""
        if not parts:
            return []
        dicts = [pc.dictionary_encode(p) for p in parts]
        uniques = [d.dictionary for d in dicts]
        ids = self.lookup(pa.concat_arrays(uniques), np.repeat(np.arange(len(parts)), [len(u) for u in uniques]))
        starts = np.cumsum([0] + [len(u) for u in uniques])
        return [ids[starts[j]:starts[j + 1]][d.indices.to_numpy()] for j, d in enumerate(dicts)]

    def encode(self, table: pa.Table) -> EncodedSplit:
        if not self.usable:
            return self.encoders.encode(table, with_labels=False, what="The request")
        require_columns(table, self.columns, "The request")
        n = table.num_rows
        parts = [_canonical(table[src]) for src, _ in self.cat]
        if self.scenario:
            parts.append(_canonical(table[self.scenario[0]]))
        lists = [token_lists(table[f.source], f.sep) for f, _ in self.seqs]
        flats = [pc.list_flatten(x) for x in lists]
        parts += [_canonical(x) for x in flats]
        cols = self.lookup_columns(parts)
        k = len(self.cat)
        cat = cols[:k]
        scenario = np.zeros(n, np.int32)
        if self.scenario:
            scenario = cols[k]
            if self.encoders.schema.scenario.as_feature:
                cat.append(scenario)
            k += 1
        seqs = {f.name: _pad(x, cols[k + j], f.max_len, f.keep) for j, ((f, _), x) in enumerate(zip(self.seqs, lists))}
        return EncodedSplit(
            categorical=np.stack(cat, axis=1) if cat else np.zeros((n, 0), np.int32),
            numeric=self.encoders.dense(table)[0],
            sequences=seqs, scenario=scenario, labels=np.zeros((n, 0), np.float32), user=None)


def _pad(lists: pa.ListArray, ids: np.ndarray, max_len: int, keep: str) -> np.ndarray:
    """Token ids of list rows -> [n, max_len], padded with 0, keeping the first or last max_len tokens (as
    SequenceEncoder.transform does)."""
    n = len(lists)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)
    if keep == "last":
        pos = pos - np.repeat(np.maximum(lengths - max_len, 0), lengths)
    ok = (pos >= 0) & (pos < max_len)
    out = np.zeros((n, max_len), dtype=np.int32)
    out[row[ok], pos[ok]] = ids[ok]
    return out
