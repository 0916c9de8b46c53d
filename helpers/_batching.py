"""Turning tokenized rows into padded batches, grouped by length so little padding is computed.

Tokenization happens once (`Dataset.map`); batches are padded only to their own longest row
(dynamic padding). Sorting rows of similar length into the same batch cuts padding further.

Why not `DataCollatorWithPadding` and the `Trainer`'s `group_by_length` sampler, which do the same job
(notebook 01's plain loop uses the collator)? Measured (docs/benchmarks.md, `make bench-scale`, 1M reviews):
- `TokenStore` takes the tokenized Arrow buffers as NumPy views: 0.04 s for 1M rows (0.02% of
  tokenization), 405 MB, no Python objects per token; the collator reads rows as Python lists of ints
  (~40 bytes per token: ~4 GB per million rows of 100 tokens when kept).
- The first training steps at 1M rows: 15.6 s here against 63.1 s for the `Trainer` path; the data side
  alone feeds 71,000 rows/s.
- `LengthGroupedBatchSampler` sorts within mega-batches of 50 batches (the `Trainer`'s: 7): 2% padding
  left, and its state (epoch, position) is part of the checkpoint, so a resumed run sees the same batches
  as an uninterrupted one (the exact resume `hp.train` promises).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Columns the collator knows how to pad, with their padding values (None: the tokenizer's pad id).
PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "labels": -100,
              "decoder_input_ids": None, "decoder_attention_mask": 0}


class _Ragged:
    """One list column as flat arrays: `values` and `offsets` per Arrow chunk (the CSR layout Arrow list
    arrays already have), taken zero-copy, so a memory-mapped dataset stays on disk until a row is read."""

    def __init__(self, chunked):
        self.values, self.offsets, starts = [], [], [0]
        for chunk in chunked.chunks:
            offsets = chunk.offsets.to_numpy(zero_copy_only=False)  # int32, chunk-relative
            values = chunk.values.to_numpy(zero_copy_only=chunk.values.null_count == 0)
            self.values.append(values)
            self.offsets.append(offsets)
            starts.append(starts[-1] + len(chunk))
        self.starts = np.asarray(starts, dtype=np.int64)
        self.single = len(self.values) == 1

    def lengths(self) -> np.ndarray:
        if not self.offsets:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([np.diff(o) for o in self.offsets]).astype(np.int32, copy=False)

    def row(self, i: int) -> np.ndarray:
        c = 0 if self.single else int(np.searchsorted(self.starts, i, side="right") - 1)
        j = i - self.starts[c]
        off = self.offsets[c]
        return self.values[c][off[j]: off[j + 1]]

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values) + sum(o.nbytes for o in self.offsets)


class TokenStore(torch.utils.data.Dataset):
    """Tokenized rows kept as flat NumPy arrays, read zero-copy from a `datasets.Dataset`'s Arrow buffers.

    Memory does not grow with Python objects: a million rows of 100 tokens cost their Arrow buffers
    (memory-mapped from the datasets cache when the dataset lives there) plus 4 bytes of length per
    row, not ~40 bytes per token as Python lists of ints would. `store[i]` is a dict of NumPy views
    (cheap per-row access); `lengths` feeds length grouping; `PadCollator` pads the views.
    """

    def __init__(self, dataset, columns: Sequence[str] | None = None):
        if not hasattr(dataset, "column_names"):  # a list of row dicts (tests, small hand-made data)
            import datasets

            dataset = datasets.Dataset.from_list(list(dataset))
        available = list(dataset.column_names)
        if "label" in available and "labels" not in available:
            dataset = dataset.rename_column("label", "labels")
            available = [("labels" if c == "label" else c) for c in available]
        wanted = [c for c in (columns or available) if c in available and (c in PAD_VALUES or c == "labels")]
        if "input_ids" not in wanted:
            raise ValueError("Tokenized data needs an 'input_ids' column; tokenize with Dataset.map first.")
        if getattr(dataset, "_indices", None) is not None:  # after select/shuffle: one Arrow copy in row order
            dataset = dataset.flatten_indices()
        table = dataset.data.table
        self.ragged: dict[str, _Ragged] = {}
        self.scalars: dict[str, np.ndarray] = {}
        import pyarrow as pa

        for name in wanted:
            column = table.column(name)
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):  # also with no rows (no chunk)
                self.ragged[name] = _Ragged(column)
            else:
                self.scalars[name] = column.to_numpy()
        self.columns = [*self.ragged, *self.scalars]
        self.lengths = self.ragged["input_ids"].lengths()

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {name: col.row(i) for name, col in self.ragged.items()}
        for name, values in self.scalars.items():
            row[name] = values[i]
        return row

    def nbytes(self) -> int:
        """Bytes the store's arrays span (memory-mapped pages are read only when used)."""
        return (sum(c.nbytes() for c in self.ragged.values()) + sum(v.nbytes for v in self.scalars.values())
                + self.lengths.nbytes)


TokenizedRows = TokenStore  # the earlier name


def as_rows(data) -> TokenStore:
    return data if isinstance(data, TokenStore) else TokenStore(data)


class PadCollator:
    """Pads every sequence column to the batch's longest row; builds `attention_mask` if absent.

    Scalar `labels` (classification) become a 1-D tensor; sequence `labels` are padded with -100 so
    the loss ignores padding. `pad_to_multiple_of=8` helps GPU tensor cores, not CPUs.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None, padding_side: str = "right"):
        if pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos_token).")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side

    def _pad(self, sequences: list, value: int) -> torch.Tensor:
        lengths = [len(s) for s in sequences]
        longest = max(lengths)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = np.full((len(sequences), longest), value, dtype=np.int64)
        right = self.padding_side == "right"
        for i, (seq, n) in enumerate(zip(sequences, lengths)):
            if right:
                out[i, :n] = seq
            else:
                out[i, longest - n:] = seq
        return torch.from_numpy(out)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if isinstance(values[0], (list, tuple, np.ndarray)):
                pad = PAD_VALUES.get(key, 0)
                batch[key] = self._pad(values, self.pad_token_id if pad is None else pad)
            else:
                array = np.asarray(values)
                batch[key] = torch.from_numpy(array.astype(np.float32) if array.dtype.kind == "f" else array)
        if "attention_mask" not in batch:
            lengths = [len(row["input_ids"]) for row in rows]
            batch["attention_mask"] = self._pad([np.ones(n, dtype=np.int64) for n in lengths], 0)
        return batch


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of rows of similar length (the idea of HF's `group_by_length`).

    Each epoch: shuffle all rows (seeded by `seed + epoch`), cut into mega-batches of
    `batch_size * mega_batch_mult`, sort each by length, cut into batches, shuffle the batches,
    and put the batch holding the longest row first so an out-of-memory error shows at once.
    The order depends only on (seed, epoch): a resumed run sees the same batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 42, shuffle: bool = True,
                 group_by_length: bool = True, mega_batch_mult: int = 50, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mega = batch_size * mega_batch_mult
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            groups = [order[i: i + self.mega] for i in range(0, n, self.mega)]
            order = np.concatenate([g[np.argsort(-self.lengths[g], kind="stable")] for g in groups])
        batches = [order[i: i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and len(batches) > 1:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
            if self.group_by_length:
                longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b]].max())
                batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class ProcessShare(torch.utils.data.Sampler):
    """This process's share of each global batch of `batches` (a `LengthGroupedBatchSampler`), for runs in
    several processes (`torchrun` / `accelerate launch`): every process sees the same sequence of global
    batches as one process would, cut into equal contiguous parts, so the processes together train every row
    once per epoch and the run is the 1-process run, step for step.

    Why not Accelerate's own sharding (`split_batches=True`): it yields only full batches until the last, so a
    short remainder batch anywhere else (the length-grouped order puts it at a random position) was dropped
    while `len()` still counted it, and the epoch never ended (tests/test_processes.py).

    The remainder batch (rows not a multiple of the batch) is split as evenly as it goes; `weights[i]` scales
    batch i's loss so that the processes' averaged gradient is the gradient of the global batch's mean loss
    (a part of k rows of a batch of r rows weighs k * num_processes / r; 1.0 for every full batch). A process
    whose part is empty (r < num_processes) still steps with every other (the gradient all-reduce needs all
    of them): it gets one row of the batch with weight 0.
    """

    def __init__(self, batches: LengthGroupedBatchSampler, num_processes: int = 1, process_index: int = 0):
        self.batches, self.num_processes, self.process_index = batches, num_processes, process_index
        self.weights: list[float] = []  # this epoch's, one per batch (set when iteration starts)
        self.sizes: list[int] = []  # rows of each global batch (every process counts the same)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        shares, self.weights, self.sizes = [], [], []
        for ids in self.batches.batches():
            part = [int(i) for i in np.array_split(np.asarray(ids), self.num_processes)[self.process_index]]
            shares.append(part or [ids[0]])
            self.weights.append(len(part) * self.num_processes / len(ids))
            self.sizes.append(len(ids))
        return iter(shares)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches for evaluation: longest first, so padding is minimal and OOM shows at once."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
