"""Property-based tests: loaders and collators on random text, labels, encodings and lengths.

No crash other than the documented `DataError`, and no row lost without being reported.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import helpers as hp
from helpers._batching import LengthGroupedBatchSampler, PadCollator

LABELS = ["negative", "neutral", "positive"]
FAST = settings(max_examples=40)  # deadline and health checks: conftest

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
labels = st.one_of(st.sampled_from(LABELS), st.sampled_from(["Positive", " neutral ", "NEGATIVE"]),
                   st.sampled_from(["", "bullish", "2"]))
rows = st.lists(st.tuples(labels, texts), min_size=0, max_size=30)


def _write(tmp_path, rows_, encoding: str, newline: str) -> object:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerows(rows_)
    path = tmp_path / "data.csv"
    path.write_bytes(buffer.getvalue().encode(encoding, errors="replace"))
    return path


@FAST
@given(rows_=rows, encoding=st.sampled_from(["utf-8", "latin-1", "utf-8-sig"]),
       newline=st.sampled_from(["\n", "\r\n", "\r"]))
def test_labeled_loader_never_loses_a_row_silently(tmp_path_factory, rows_, encoding, newline):
    path = _write(tmp_path_factory.mktemp("p"), rows_, encoding, newline)
    try:
        loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", header=False,
                                           columns=["label", "sentence"], label_names=LABELS)
    except hp.data.DataError as err:  # the documented failure: one line, names the problem
        assert "\n" not in str(err) and len(str(err)) > 20
        return
    report = loaded.report
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert len(loaded.dataset) == report.rows_kept
    assert set(loaded.dataset["label"]) <= set(LABELS)
    assert all(t.strip() for t in loaded.dataset["text"])


messy = st.text(alphabet=st.sampled_from(list('ab "\t\n\r,;') + ["é", "x"]), max_size=20)


@FAST
@given(rows_=st.lists(st.tuples(st.sampled_from(["0", "1"]), messy), min_size=1, max_size=25))
def test_glue_style_tsv_with_stray_quotes_tabs_and_newlines_accounts_for_every_line(tmp_path_factory, rows_):
    """Raw TSV lines (no quoting), whatever the text holds: every non-blank line is a row read, kept or reported."""
    body = "".join(f"{text}\t{label}\n" for label, text in rows_)
    path = tmp_path_factory.mktemp("p") / "train.tsv"
    path.write_text("sentence\tlabel\n" + body)
    lines = [line for line in body.replace("\r", "\n").split("\n") if line.strip()]
    try:
        loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", label_names="neg,pos")
    except hp.data.DataError as err:
        assert "\n" not in str(err)
        return
    report = loaded.report
    assert report.rows_read == len(lines) == report.rows_kept + sum(report.dropped.values())
    assert all(t.strip() and t in body for t in loaded.dataset["text"])


@FAST
@given(pairs=st.lists(st.tuples(texts, texts), max_size=25))
def test_pair_loader_never_loses_a_row_silently(tmp_path_factory, pairs):
    import json

    path = tmp_path_factory.mktemp("p") / "pairs.jsonl"
    lines = [json.dumps({"document": s, "summary": t, "id": i}) + "\n" for i, (s, t) in enumerate(pairs)]
    path.write_text("".join(lines))
    try:
        loaded = hp.data._load_text_pairs(path, source_col="document", target_col="summary", id_col="id")
    except hp.data.DataError as err:
        assert "\n" not in str(err)
        return
    assert loaded.report.rows_read == loaded.report.rows_kept + sum(loaded.report.dropped.values())
    assert len(loaded.dataset) == loaded.report.rows_kept == len(set(loaded.dataset["id"]))


sequences = st.lists(st.lists(st.integers(min_value=1, max_value=30000), min_size=1, max_size=40), min_size=1,
                     max_size=12)


@FAST
@given(seqs=sequences, side=st.sampled_from(["left", "right"]), multiple=st.sampled_from([None, 8]),
       with_seq_labels=st.booleans())
def test_collator_pads_every_row_and_keeps_its_tokens(seqs, side, multiple, with_seq_labels):
    rows_ = [{"input_ids": s, "labels": (list(s) if with_seq_labels else len(s) % 3)} for s in seqs]
    batch = PadCollator(0, pad_to_multiple_of=multiple, padding_side=side)(rows_)
    width = batch["input_ids"].shape[1]
    assert width >= max(map(len, seqs)) and (multiple is None or width % multiple == 0)
    for i, s in enumerate(seqs):
        mask = batch["attention_mask"][i].bool()
        assert int(mask.sum()) == len(s)
        assert batch["input_ids"][i][mask].tolist() == s
        if with_seq_labels:
            assert batch["labels"][i][mask].tolist() == s and (batch["labels"][i][~mask] == -100).all()
    if not with_seq_labels:
        assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (len(seqs),)


@FAST
@given(lengths=st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=300),
       batch_size=st.integers(min_value=1, max_value=64), seed=st.integers(min_value=0, max_value=10**6),
       epoch=st.integers(min_value=0, max_value=5))
def test_sampler_covers_each_row_once_per_epoch_and_is_reproducible(lengths, batch_size, seed, epoch):
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=seed)
    sampler.set_epoch(epoch)
    batches = sampler.batches()
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # nothing lost, nothing repeated
    assert all(len(b) <= batch_size for b in batches) and len(batches) == len(sampler)
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch comes first
    again = LengthGroupedBatchSampler(lengths, batch_size, seed=seed)
    again.set_epoch(epoch)
    assert again.batches() == batches


@pytest.mark.parametrize("bad", [b"", b"\xff\xfe\x00garbage", b"label,sentence\n"])
def test_broken_files_give_a_data_error(tmp_path, bad):
    path = tmp_path / "broken.csv"
    path.write_bytes(bad)
    with pytest.raises(hp.data.DataError):
        hp.data.load_labeled_data(path, text_col="sentence", label_col="label", label_names=LABELS)


def test_fingerprint_changes_with_the_data():
    import datasets

    a = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})
    b = datasets.Dataset.from_dict({"text": ["x", "z"], "label": [0, 1]})
    fa = hp.data._fingerprint({"train": a})
    assert fa == hp.data._fingerprint({"train": a}) and fa["rows"] == {"train": 2}
    assert fa["sha256"] != hp.data._fingerprint({"train": b})["sha256"]
    assert np.isscalar(len(fa["sha256"]))
