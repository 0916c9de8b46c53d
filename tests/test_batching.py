"""Batching: the zero-copy token store, the length-grouped sampler and the padding collator."""

from __future__ import annotations

import numpy as np
import pytest

from helpers._batching import LengthGroupedBatchSampler, PadCollator, TokenStore


def _rows(n, seed=0, pairs=False):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.integers(3, 40))
        row = {"input_ids": rng.integers(1, 30000, length).tolist(), "attention_mask": [1] * length, "label": i % 3}
        if pairs:
            row["token_type_ids"] = [0] * (length // 2) + [1] * (length - length // 2)
        rows.append(row)
    return rows


def _as_lists(batch):
    return {k: v.tolist() for k, v in batch.items()}


@pytest.fixture(params=["chunks", "memory-mapped"])
def chunked(tmp_path, request):
    """A tokenized dataset the way real ones are: several Arrow chunks in memory, or memory-mapped from
    the disk (the datasets cache); the tests also `select` (an indices mapping) as a split leaves it."""
    import datasets

    parts = [datasets.Dataset.from_list(_rows(50, seed=s, pairs=True)) for s in range(3)]
    whole = datasets.concatenate_datasets(parts)
    if request.param == "chunks":
        return whole
    whole.save_to_disk(tmp_path / "tok")
    return datasets.load_from_disk(tmp_path / "tok")


def test_store_rows_equal_the_datasets_rows_across_chunks_and_selects(chunked):
    order = list(range(149, -1, -3))
    for data in (chunked, chunked.select(order)):
        store = TokenStore(data)
        assert len(store) == len(data) and store.lengths.tolist() == [len(r) for r in data["input_ids"]]
        for i in (0, 1, len(data) // 2, len(data) - 1):
            want = data[i]
            got = store[i]
            assert got["input_ids"].tolist() == want["input_ids"]
            assert got["token_type_ids"].tolist() == want["token_type_ids"] and got["labels"] == want["label"]


def test_store_batches_equal_the_batches_of_python_lists(chunked):
    store = TokenStore(chunked)
    collate = PadCollator(0)
    for ids in LengthGroupedBatchSampler(store.lengths, 16, seed=3).batches():
        lists = [{"input_ids": chunked[i]["input_ids"], "attention_mask": chunked[i]["attention_mask"],
                  "token_type_ids": chunked[i]["token_type_ids"], "labels": chunked[i]["label"]} for i in ids]
        assert _as_lists(collate([store[i] for i in ids])) == _as_lists(collate(lists))


def test_store_reads_arrow_buffers_without_copying_them(chunked):
    store = TokenStore(chunked)
    column = store.ragged["input_ids"]
    assert len(column.values) in (1, 3) and all(isinstance(v, np.ndarray) for v in column.values)
    assert not any(v.flags.owndata for v in column.values)  # views of the memory-mapped Arrow buffers
    assert column.values[0].dtype == np.int32 and store.ragged["attention_mask"].values[0].dtype == np.int8
    assert store.nbytes() < 150 * 45 * 6  # ~4+1+1 bytes a token plus offsets: no Python objects per token


def test_store_takes_a_list_of_rows_and_refuses_untokenized_data():
    store = TokenStore(_rows(5))
    assert len(store) == 5 and store[4]["labels"] == 1
    import datasets

    with pytest.raises(ValueError, match="input_ids"):
        TokenStore(datasets.Dataset.from_dict({"text": ["a"]}))


def test_length_grouped_sampler_covers_every_row_once_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000).tolist()
    sampler = LengthGroupedBatchSampler(lengths, 16, seed=1)
    batches = sampler.batches()
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch comes first
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = LengthGroupedBatchSampler(lengths, 16, seed=1, group_by_length=False).batches()
    padded_naive = sum(len(b) * max(lengths[i] for i in b) for b in naive)
    assert padded < 0.75 * padded_naive
    assert sampler.batches() == batches  # same (seed, epoch): same order
    sampler.set_epoch(1)
    assert sampler.batches() != batches


def test_collator_pads_to_the_longest_row_and_masks_labels():
    collate = PadCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [5], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    seq = collate([{"input_ids": [1, 2], "labels": [3, 4]}, {"input_ids": [1], "labels": [3]}])
    assert seq["labels"].tolist() == [[3, 4], [3, -100]]
    left = PadCollator(pad_token_id=0, padding_side="left")([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert left["input_ids"].tolist() == [[1, 2], [0, 3]] and left["attention_mask"].tolist() == [[1, 1], [0, 1]]




def test_padding_bounded_batches_keep_padding_small_and_cover_every_row():
    from helpers._classify import padding_bounded_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=500).tolist()
    batches = padding_bounded_batches(lengths, batch_size=32, max_padding=0.25)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) <= 32
        real = sum(lengths[i] for i in batch)
        assert max(lengths[i] for i in batch) * len(batch) <= 1.25 * real + 1e-9
    # equal lengths fill whole batches; one long outlier gets its own
    assert [len(b) for b in padding_bounded_batches([10] * 64, 32)] == [32, 32]
    assert padding_bounded_batches([10, 10, 10, 200], 32) == [[0, 1, 2], [3]]
