"""Data for fine-tuning, the way the notebooks use it: load, clean, label, split, cap, tokenize.

1. Load: `load_labeled_data` (text classification) or `load_pair_splits` (source -> target, summarization) read a
   local file, folder or archive, a Hub dataset id, or, only when allowed and said loudly, the project's generated
   sample in the same layout (docs/architecture.md, "Offline first"). How each file layout is read (CSV dialects,
   Excel, JSON lines, class folders, archives, release formats) is the readers' business: `helpers._readers`.
2. Clean: empty texts, missing labels, duplicates and texts with conflicting labels are dropped; every row
   dropped is counted with its reason in a report the notebooks print.
3. Label: the label column becomes label names (from the data, or checked against LABEL_NAMES).
4. Split (`stratified_split`, seeded and stratified; a dataset's own splits are kept), cap (`cap_samples`), map
   names to a model's ids (`to_label_ids`), tokenize (`tokenize`, `token_lengths`).
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _readers
from ._readers import DataError

__all__ = ["load_labeled_data", "load_pair_splits", "stratified_split", "cap_samples", "to_label_ids", "tokenize",
           "token_lengths", "DataError"]


# ----------------------------------------------------------------------------- what loading returns

@dataclass
class _LoadedData:
    """A cleaned dataset with standard columns `text` and `label` (a label name), plus provenance."""

    dataset: Any  # datasets.Dataset
    source: _readers.DataSource
    report: _DropReport
    label_names: list[str]
    label_rule: str = ""  # how the label column was read (printed by the notebooks)
    value_names: dict[str, str] = field(default_factory=dict)  # normalized label value -> label name
    given: _GivenSplits | None = None  # the splits the data came with, beside `dataset` (its train split)

    @property
    def has_pairs(self) -> bool:
        """True when rows are sentence pairs (a `text_pair` column beside `text`)."""
        return "text_pair" in self.dataset.column_names


@dataclass
class _GivenSplits:
    """What a dataset brought beside its train split: `stratified_split` uses these instead of re-splitting.

    `origin` names the train split (`the train split of SST-2`); `splits` holds the labelled validation / test
    Datasets, cleaned and labelled like the train split; `unused` says why a given split is not used (a GLUE
    `test.tsv` without labels)."""

    origin: str
    splits: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # split -> what it was read from (`dev.tsv`)
    unused: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- loading labeled text

def load_labeled_data(source: str | Path | None, *, text_col: str = "text", label_col: str = "label",
                      text_pair_col: str | None = None, label_names: str | list[str] | None = None,
                      label_map: dict[Any, str] | None = None, columns: list[str] | None = None,
                      header: bool | None = None, sample: str | None = None, allow_standin: bool = True,
                      hub_split: str = "train", hub_config: str | None = None, hub_max_rows: int | None = None,
                      text_join: str = ". ", unescape: bool = False, seed: int = 42,
                      label_names_default: bool = False) -> _LoadedData:
    """Load a labeled text classification dataset from a file, the Hub, or the generated sample.

    `source`: a local file (CSV/TSV/JSONL/parquet/.xlsx/fastText .txt, also .gz/.zip), data folder or archive
    (`_readers.folder_splits`: split files, class folders, save_to_disk), a Hub dataset id, or "auto"/None for the
    generated sample named by `sample`. `text_col` may join columns ("title+content", with `text_join`);
    `text_pair_col` adds the second text of sentence pairs (column `text_pair`, for the tokenizer's pair
    encoding). `label_names`: None takes the label set from the data; names or `value=name` pairs (see
    `_readers.parse_label_names`) fix it. `label_names_default=True`: they are the recipe's default, not the user's
    choice: they name integer labels, and labels that are names in the data are taken as they are (the
    notebooks pass `"LABEL_NAMES" not in run.set_by_user`). `columns` names a headerless file's columns (the
    recipe's layout); the user's `text_col` / `label_col` always win over it. `hub_max_rows` streams a random
    subset of a large Hub split. Returns columns `text` (and `text_pair`) and `label` (label *names*; map them
    to a model's ids with `to_label_ids`) of the `hub_split`; read as "train", a folder's own validation and
    test splits come along in `given` (used by `stratified_split`). Every line that could not be read and
    every row dropped in cleaning is in `report`.
    """
    wanted = [*_readers.text_columns(text_col), *([text_pair_col] if text_pair_col else []), label_col]
    parsed_names, _ = _readers.parse_label_names(label_names)
    parts = _readers.locate_frames(source, sample=sample, allow_standin=allow_standin, columns=columns, header=header,
                                   label_values=parsed_names or _readers.COMMON_LABELS, hub_split=hub_split,
                                   hub_config=hub_config, hub_max_rows=hub_max_rows, seed=seed, wanted=wanted,
                                   label_col=label_col, every_split=hub_split == "train")
    frame, used = parts.pop(hub_split)
    if used.layout == "class folders":
        text_col, label_col, text_pair_col = _readers.class_folder_columns(used, text_col, label_col, text_pair_col)
    options = {"text_col": text_col, "label_col": label_col, "text_pair_col": text_pair_col,
               "text_join": text_join, "unescape": unescape}
    loaded = _labeled_from_frame(frame, used, label_names=label_names, label_map=label_map,
                                 names_are_default=label_names_default, **options)
    if used.kind in ("folder", "archive", "hub"):
        _attach_given(loaded, parts, hub_split, options)
    return loaded


def _prepared(frame: pd.DataFrame, used: _readers.DataSource, where: str, *, text_col: str, label_col: str,
              text_pair_col: str | None, text_join: str, unescape: bool) -> tuple[pd.DataFrame, _DropReport, bool]:
    """A table's texts built and its rows cleaned: (columns `__text__`, `__pair__` when pairs, `label_col`;
    the drop report, the reader's unreadable lines included; whether it has pairs)."""
    wanted = [*_readers.text_columns(text_col), *([text_pair_col] if text_pair_col else []), label_col]
    if frame.empty:
        raise DataError(f"{where} has no data rows; point DATA_SOURCE at a file with data.")
    _readers.check_columns(frame, wanted, where)
    labels = frame[label_col]
    if (labels.isna() | (labels.astype(str).str.strip() == "")).all():  # else: "no rows left", about the text
        others = [str(c) for c in frame.columns if c not in wanted and frame[c].notna().any()]
        fix = (f"set LABEL_COL to the column that holds the labels (other columns: {', '.join(others)})" if others
               else "add the labels to the data (it has no other column that could hold them)")
        raise DataError(f"Column {label_col!r} of {where} is empty in every row: there are no labels to learn; "
                        f"{fix}.")
    # The frame is consumed: its text columns go as soon as the text is built (one copy in memory).
    text = _readers.build_text(frame, text_col, join=text_join, unescape=unescape)
    pair_text = _readers.build_text(frame, text_pair_col, join=text_join, unescape=unescape) if text_pair_col else None
    for column in [c for c in frame.columns if c != label_col]:
        del frame[column]
    frame["__text__"] = text
    if pair_text is not None:
        frame["__pair__"] = pair_text
    del text, pair_text
    frame, report = _clean_labeled(frame, "__text__", label_col, "__pair__" if text_pair_col else None)
    for reason, lines in used.skipped.items():  # lines the reader could not take count as read and dropped
        report.rows_read += len(lines)
        report.add(reason, lines)
    if frame.empty:
        raise DataError(f"No rows left in {where} after cleaning ({report.to_dict()['dropped']}); check TEXT_COL.")
    return frame, report, text_pair_col is not None


def _as_dataset(frame: pd.DataFrame, names: pd.Series, pair: bool):
    columns = {"text": frame.pop("__text__")}
    if pair:
        columns["text_pair"] = frame.pop("__pair__")
    columns["label"] = names
    return _readers.arrow_dataset(columns)


def _labeled_from_frame(frame: pd.DataFrame, used: _readers.DataSource, *, text_col: str = "text",
                        label_col: str = "label", text_pair_col: str | None = None,
                        label_names: str | list[str] | None = None, label_map: dict[Any, str] | None = None,
                        text_join: str = ". ", unescape: bool = False, names_are_default: bool = False) -> _LoadedData:
    """The cleaning half of `load_labeled_data`, for a table already read: texts built, rows cleaned and
    reported, labels read, one Arrow-backed `datasets.Dataset` made."""
    where = Path(used.used).name
    frame, report, pair = _prepared(frame, used, where, text_col=text_col, label_col=label_col,
                                    text_pair_col=text_pair_col, text_join=text_join, unescape=unescape)
    names, label_names, rule = _encode_label_names(frame, label_col, label_names, label_map, where,
                                                   names_are_default=names_are_default)
    present = names.value_counts()
    if len(present) < 2:
        raise DataError(f"Only one label in {where} ({', '.join(f'{k!r}: {v} rows' for k, v in present.items())}): "
                        "a classifier needs at least two labels with examples; check LABEL_COL "
                        f"({label_col!r}) and that the file holds every class.")
    values = pd.DataFrame({"value": _readers.normalized_labels(frame[label_col]).to_numpy(),
                           "name": names.to_numpy()})
    value_names = dict(values.drop_duplicates("value").itertuples(index=False, name=None))
    return _LoadedData(_as_dataset(frame, names, pair), used, report, label_names, rule, value_names)


def _given_split(frame: pd.DataFrame, used: _readers.DataSource, split: str, train: _LoadedData,
                 options: dict[str, Any]):
    """A split given beside the train split, cleaned and labelled as the train split was: (Dataset, report)."""
    where = f"{Path(used.used).name} ({split})"
    label_col = options["label_col"]
    frame, report, pair = _prepared(frame, used, where, **options)
    norm = _readers.normalized_labels(frame[label_col])
    unseen = sorted(set(norm) - set(train.value_names))
    if unseen:
        raise DataError(f"The {split} split of {Path(used.used).name} has labels the train split has not "
                        f"({', '.join(unseen[:5])}); a model cannot learn them: add them to the training data, or "
                        "drop those rows.")
    return _as_dataset(frame, norm.map(train.value_names), pair), report


def _attach_given(loaded: _LoadedData, parts: dict[str, tuple[pd.DataFrame, _readers.DataSource]], hub_split: str,
                  options: dict[str, Any]) -> None:
    """Clean the splits a folder came with and hang them on `loaded.given` (and on its dataset, which the
    notebooks pass to `stratified_split`); a split without labels is named, with what is used instead."""
    given = _GivenSplits(origin=_readers.split_origin(loaded.source, hub_split))
    if loaded.source.kind == "hub":
        given.unused["hub"] = "the Hub dataset's other splits are not read here"
    report = _DropReport()
    report.merge(loaded.report, hub_split if parts else None)
    for split, (frame, used) in parts.items():
        why = _readers.unlabelled(frame, options["label_col"])
        if why is not None:
            given.unused[split] = f"{_readers.split_origin(used, split)} {why}"
            print(f"note: {given.unused[split]}: it is not used for metrics (unlabelled); the {split} split is held "
                  f"out of {given.origin} instead")
            continue
        given.splits[split], part = _given_split(frame, used, split, loaded, options)
        given.sources[split] = _readers.split_origin(used, split)
        report.merge(part, split)
    loaded.report, loaded.given = report, given
    _GIVEN[loaded.dataset] = given  # `stratified_split(loaded.dataset)` finds it; a subset is another object


# The given splits of each loaded train Dataset, by identity: the notebooks pass `loaded.dataset` alone to
# `stratified_split`. Weak keys: nothing outlives its dataset, and nothing rides along when a dataset is
# pickled to tokenizing processes (an attribute on the Dataset would).
_GIVEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------------------- cleaning

@dataclass
class _DropReport:
    """What cleaning removed, by reason, with a few examples of each."""

    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # kept but worth knowing (e.g. mojibake)
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (rows read, kept), several splits

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())

    def add(self, reason: str, texts: list[str]) -> None:
        if texts:
            self.dropped[reason] = self.dropped.get(reason, 0) + len(texts)
            self.examples.setdefault(reason, []).extend(t[:80] for t in texts[:3])

    def merge(self, other: _DropReport, part: str | None = None) -> None:
        """Add another part's counts (e.g. the splits of one dataset; `part` names it in the summary)."""
        if part is not None:
            self.parts[part] = (other.rows_read, other.rows_kept)
        self.rows_read += other.rows_read
        for reason, count in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count
            self.examples.setdefault(reason, []).extend(other.examples.get(reason, []))
        for reason, count in other.flagged.items():
            self.flagged[reason] = self.flagged.get(reason, 0) + count

    def summary(self) -> str:
        lines = [f"read {self.rows_read} rows, kept {self.rows_kept}"]
        if len(self.parts) > 1:
            lines[0] += " (" + ", ".join(f"{k}: {kept} of {read}" for k, (read, kept) in self.parts.items()) + ")"
        for reason, count in self.dropped.items():
            lines.append(f"  dropped {count:>5} {reason}  e.g. {self.examples.get(reason, [])[:2]}")
        for reason, count in self.flagged.items():
            lines.append(f"  flagged {count:>5} {reason} (kept)")
        if not self.dropped:
            lines.append("  nothing dropped")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "dropped": dict(self.dropped), "flagged": dict(self.flagged)}


_MOJIBAKE = re.compile(r"Ã.|â€|Â[^\w\s]|\ufffd")
def _clean_labeled(frame: pd.DataFrame, text_col: str, label_col: str,
                   pair_col: str | None = None) -> tuple[pd.DataFrame, _DropReport]:
    """Drop empty texts, missing labels, duplicates and texts with conflicting labels; report each.

    Texts (or text pairs) are compared after whitespace normalization, by a 64-bit hash (`_readers.text_keys`:
    8 bytes a row, not a second copy of every text). A text seen with two different labels is ambiguous: all
    its copies go (keeping one would be a coin toss).
    """
    report = _DropReport(rows_read=len(frame))
    frame = frame.copy()
    frame[text_col] = frame[text_col].fillna("").astype(str)
    key, empty = _readers.text_keys(frame[text_col])
    blank = frame.loc[empty, text_col].str.strip() == ""
    report.add("empty text", frame.loc[empty, text_col][blank].tolist())
    report.add("no visible characters (only zero-width, control or format ones)",
               frame.loc[empty, text_col][~blank].tolist())
    if pair_col is not None:
        frame[pair_col] = frame[pair_col].fillna("").astype(str)
        pair_key, pair_empty = _readers.text_keys(frame[pair_col])
        empty_pair = pair_empty & ~empty
        report.add("empty text pair", frame.loc[empty_pair, text_col].tolist())
        empty |= empty_pair
        key = _readers.combine_keys(key, pair_key)
    labels = frame[label_col]
    no_label = labels.isna() | (labels.astype(str).str.strip() == "")
    no_label &= ~empty
    report.add("missing label", frame.loc[no_label, text_col].tolist())
    frame, key = frame[~empty & ~no_label], key[~empty & ~no_label]

    label_norm = frame[label_col].map(_readers.normalize_label)
    labels_per_text = label_norm.groupby(key).nunique()
    conflicting = key.map(labels_per_text) > 1
    report.add("conflicting labels (same text, different labels)", frame.loc[conflicting, text_col].tolist())
    frame, key, label_norm = frame[~conflicting], key[~conflicting], label_norm[~conflicting]

    duplicate = key.duplicated(keep="first")
    report.add("duplicate (same text and label)", frame.loc[duplicate, text_col].tolist())
    frame = frame[~duplicate]

    mojibake = frame[text_col].str.contains(_MOJIBAKE)
    if mojibake.any():
        report.flagged["suspected mojibake (encoding damage)"] = int(mojibake.sum())
    return frame.reset_index(drop=True), report


# ------------------------------------------------------------------------------------------- labels

def _encode_label_names(frame: pd.DataFrame, label_col: str, label_names: str | list[str] | None,
                        label_map: dict[Any, str] | None = None, where: str = "data", *,
                        names_are_default: bool = False) -> tuple[pd.Series, list[str], str]:
    """Label column -> label names, checked against `label_names`; returns (names per row, the label
    set in order, a sentence saying how labels were read).

    `label_names` None takes the label set from the data. Integer labels with `label_names` are
    positions in it, counted from 0 or from 1 as the values show (said in the returned rule); a
    `label_map` or `value=name` pairs map raw values explicitly. Names compare case-insensitively
    and keep the spelling of `label_names` (or of the data); numbers compare as numbers (`01` is `1`).
    `names_are_default`: `label_names` is a recipe's default, not the user's: it exists to name integer
    labels, so labels that are names it lacks are taken from the data instead of refused (the rule says so).
    """
    raw = frame[label_col]
    norm = _readers.normalized_labels(raw)
    wanted, pairs = _readers.parse_label_names(label_names)
    if label_map:
        pairs = {_readers.normalize_label(k): str(v) for k, v in label_map.items()}
        wanted = wanted or list(dict.fromkeys(pairs.values()))
    prefix = ""
    if (names_are_default and wanted is not None and not pairs and not norm.str.fullmatch(_readers.INTEGER).all()
            and set(norm) - {_readers.normalize_label(n) for n in wanted}):
        prefix = (f"LABEL_NAMES was the recipe's default ({','.join(wanted)}), which names integer labels; "
                  "the data's labels are names, so ")
        wanted = None
    if wanted is None:
        names, wanted, rule = _readers.labels_from_data(raw, norm, label_col, where)
    else:
        names, rule = _readers.labels_by_names(raw, norm, wanted, pairs, label_col, where)
    return names, wanted, prefix + rule + _readers.label_spellings(raw, norm)


# ------------------------------------------------------------------------ splits, caps, ids, tokens

def stratified_split(dataset, *, label_col: str = "label", validation_size: float = 0.1, test_size: float = 0.1,
                     seed: int = 42):
    """Seeded, stratified train/validation/test split (80/10/10 by default) -> `DatasetDict`.

    Data that came with its own labelled splits (a folder's `dev.tsv`, `test/`: the `given` of what
    `load_labeled_data` returned; pass that or its `dataset`) keeps them: only a split it lacks is held out of its
    train split (seeded, stratified, `validation_size` or `test_size` of it), said in one line; data re-split
    anyway says which.

    Why scikit-learn's `train_test_split(stratify=...)` and not `Dataset.train_test_split(stratify_by_column=...)`:
    datasets stratifies only a `ClassLabel` column, and the labels here are still names (a model's label ids come
    later, from `to_label_ids`), so it would take a `class_encode_column` pass first. Measured on 20,000 rows of 3
    labels: the same rows per class held out (datasets' stratified split is a port of scikit-learn's
    StratifiedShuffleSplit) but other rows (another random generator), so every seeded split of earlier runs would
    change, and 0.9 s (encode + split) against 0.02 s."""
    import datasets

    given = dataset.given if isinstance(dataset, _LoadedData) else _GIVEN.get(dataset)
    dataset = dataset.dataset if isinstance(dataset, _LoadedData) else dataset
    if given is not None and given.splits:
        return _split_as_given(dataset, given, label_col, validation_size, test_size, seed)
    labels = list(dataset[label_col])
    counts = Counter(labels)
    _check_splittable(counts, len(labels), validation_size + test_size, "three ways")
    if given is not None:
        why = "; ".join(given.unused.values())
        print(f"note: re-splitting {given.origin} {_percent(1 - validation_size - test_size)}/"
              f"{_percent(validation_size)}/{_percent(test_size)} (seeded, stratified)"
              + (f": {why}" if why else ": it has no validation or test split"))
    index = list(range(len(dataset)))
    train_idx, rest_idx = _stratified_indices(index, labels, validation_size + test_size, seed)
    rest_labels = [labels[i] for i in rest_idx]
    val_idx, test_idx = _stratified_indices(rest_idx, rest_labels, test_size / (validation_size + test_size), seed)
    return datasets.DatasetDict(train=dataset.select(train_idx), validation=dataset.select(val_idx),
                                test=dataset.select(test_idx))


def _percent(share: float) -> str:
    return f"{round(share * 100):g}"


def _stratified_indices(index: list[int], labels: list[str], held_out: float, seed: int) -> tuple[list, list]:
    from sklearn.model_selection import train_test_split

    return train_test_split(index, test_size=held_out, random_state=seed, stratify=labels)


def _check_splittable(counts: Counter, rows: int, held_out_share: float, how: str) -> None:
    """Refuse, in one line, data too small to split with every label in every part."""
    parts = 3 if how == "three ways" else 2
    rare = [k for k, n in counts.items() if n < parts]
    if rare:
        raise DataError(f"Labels {rare} have fewer than {parts} rows, too few to split {how}; "
                        "add data or drop those labels.")
    held_out = math.ceil(rows * held_out_share)
    if held_out < (parts - 1) * len(counts) or rows - held_out < len(counts):
        raise DataError(f"{rows} rows for {len(counts)} labels are too few for a stratified "
                        f"{'train/validation/test' if parts == 3 else 'train/held-out'} split with every label in each "
                        f"part; add data (at least {10 * len(counts)} rows).")


def _split_as_given(dataset, given: _GivenSplits, label_col: str, validation_size: float, test_size: float,
                    seed: int):
    """The data's own splits; a missing (or unlabelled) validation or test split held out of the train split."""
    import datasets

    parts, said = dict(given.splits), []
    missing = [s for s in ("validation", "test") if s not in parts]
    train = dataset
    if missing:
        share = validation_size if missing[0] == "validation" else test_size
        labels = list(dataset[label_col])
        _check_splittable(Counter(labels), len(labels), share, "in two")
        keep, held = _stratified_indices(list(range(len(dataset))), labels, share, seed)
        train, parts[missing[0]] = dataset.select(keep), dataset.select(held)
        why = given.unused.get(missing[0], f"no {missing[0]} split given")
        said.append(f"{missing[0]}: {_percent(share)}% of the train split held out ({len(held):,} rows, seeded, "
                    f"stratified; {why})")
    print(f"note: using the data's own splits: train {len(train):,} rows ({given.origin}), "
          + ", ".join(f"{k} {len(v):,} rows ({given.sources.get(k, 'given')})" for k, v in given.splits.items())
          + (f"; {said[0]}" if said else ""))
    return datasets.DatasetDict(train=train, validation=parts["validation"], test=parts["test"])


def cap_samples(dataset, max_samples: int | None, *, label_col: str | None = "label", seed: int = 42):
    """At most `max_samples` rows, a seeded stratified subsample (None or a bigger cap: all rows)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    if max_samples <= 0:
        raise DataError(f"max samples must be positive, got {max_samples}; use None for all rows.")
    index = list(range(len(dataset)))
    if label_col is not None:
        from sklearn.model_selection import train_test_split

        labels = list(dataset[label_col])
        if min(Counter(labels).values()) >= 2 and max_samples >= len(set(labels)):
            keep, _ = train_test_split(index, train_size=max_samples, random_state=seed, stratify=labels)
            return dataset.select(sorted(keep))
    import random

    return dataset.select(sorted(random.Random(seed).sample(index, max_samples)))


def to_label_ids(dataset, label2id: dict[str, int], *, label_col: str = "label"):
    """Replace label names by a model's ids, matching names case-insensitively (never by position).

    The column becomes a `ClassLabel` whose names are in the model's id order, so
    `dataset.features["label"].names[i]` is the name of id i.

    Why not `class_encode_column` + `align_labels_with_mapping(label2id)`: those need a `ClassLabel` column first
    (one more pass over the data), match names only after lower-casing (here `1`, `01` and `1.0` are one label,
    as when loading), and a label missing from the model's map fails with a bare `KeyError` mid-map; here it is one
    `DataError` naming the labels, before any row is mapped.
    """
    import datasets

    lookup = {_readers.normalize_label(k): int(v) for k, v in label2id.items()}
    values = dataset.unique(label_col)
    missing = sorted(str(v) for v in values if _readers.normalize_label(v) not in lookup)
    if missing:
        raise DataError(f"Labels {missing} are not in the model's label map {sorted(label2id)}; "
                        "pass the dataset's label names when loading the model.")
    names = [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
    ids = {v: lookup[_readers.normalize_label(v)] for v in values}
    features = dataset.features.copy()
    features[label_col] = datasets.ClassLabel(names=[str(n) for n in names])
    return dataset.map(lambda batch: {label_col: [ids[v] for v in batch[label_col]]}, batched=True,
                       features=features, desc="label ids")


def tokenize(dataset, fn, *, num_proc: int | None = None, keep: tuple[str, ...] = ("label",), desc: str = "tokenize"):
    """`dataset.map(fn, batched=True)` keeping only the model inputs `fn` returns and `keep` columns.

    Large datasets are tokenized in `num_proc` processes (default: one per CPU core, up to 8, from
    50,000 rows on; below that, starting processes costs more than it saves). The result is Arrow,
    ready for `_batching.TokenStore` (no Python lists of token ids are built).
    """
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if len(dataset) >= 50_000 else None
    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.map(fn, batched=True, batch_size=1000, remove_columns=drop, num_proc=num_proc, desc=desc)


def token_lengths(dataset, tokenizer, *, max_rows: int = 20_000, seed: int = 0) -> list[int]:
    """Tokens per row (text, or text + text_pair) of at most `max_rows` rows drawn with the seed: enough
    for a length histogram, without tokenizing millions of rows into Python lists a second time."""
    if len(dataset) > max_rows:
        dataset = dataset.select(sorted(np.random.default_rng(seed).choice(len(dataset), max_rows, replace=False)))
    pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
    return [len(ids) for ids in tokenizer(list(dataset["text"]), pairs)["input_ids"]]


def _label_counts(dataset, label_col: str = "label") -> dict[str, int]:
    return dict(sorted(Counter(dataset[label_col]).items()))


# --------------------------------------------------------------------------- source -> target pairs

@dataclass
class _LoadedPairSplits:
    """Cleaned train/validation/test source -> target pairs, where they came from, and what was dropped."""

    splits: Any  # datasets.DatasetDict with columns source, target (and id)
    source: _readers.DataSource
    report: _DropReport
    how: str  # "the dataset's own splits" or "a seeded 80/10/10 split"


def load_pair_splits(source: str | Path | None, *, source_col: str = "Input", target_col: str = "Output",
                     id_col: str | None = None, sample: str | None = None, allow_standin: bool = True,
                     hub_config: str | None = None, hub_max_rows: int | None = None, seed: int = 42,
                     validation_size: float = 0.1, test_size: float = 0.1) -> _LoadedPairSplits:
    """Source -> target pairs in train/validation/test, using the dataset's own splits when it has them
    (a Hub dataset such as `zqz979/meta-review`, or a folder of `train` / `validation` / `test` files),
    else a seeded 80/10/10 split. Empty rows and duplicate pairs are dropped from each split and reported."""
    import datasets

    frames, used = _readers.pair_frames(None if source is None else str(source), sample=sample,
                                        allow_standin=allow_standin, hub_config=hub_config, hub_max_rows=hub_max_rows,
                                        seed=seed, source_col=source_col, target_col=target_col)
    report = _DropReport()
    cleaned = {}
    for split, frame in frames.items():
        where = f"{Path(used.used).name} ({split})" if len(frames) > 1 else Path(used.used).name
        cleaned[split], part = _pairs_dataset(frame, where, source_col, target_col, id_col)
        report.merge(part)
    if all(name in cleaned and len(cleaned[name]) for name in _readers.SPLIT_NAMES):
        return _LoadedPairSplits(datasets.DatasetDict(cleaned), used, report, "the dataset's own splits")
    whole = datasets.concatenate_datasets(list(cleaned.values()))
    splits = _random_split(whole, validation_size=validation_size, test_size=test_size, seed=seed)
    return _LoadedPairSplits(splits, used, report, "a seeded 80/10/10 split")


@dataclass
class _LoadedPairs:
    """A cleaned dataset with columns `source` and `target` (and `id` when the data has one), plus provenance."""

    dataset: Any  # datasets.Dataset
    source: _readers.DataSource
    report: _DropReport


def _load_text_pairs(source: str | Path | None, *, source_col: str = "text", target_col: str = "summary",
                     id_col: str | None = None, sample: str | None = None, allow_standin: bool = True,
                     hub_split: str = "train", hub_config: str | None = None, hub_max_rows: int | None = None,
                     seed: int = 42) -> _LoadedPairs:
    """Load source -> target pairs (summarization) from a file, the Hub, or the generated sample.

    Returns columns `source`, `target` (stripped strings) and `id` (as a string) when `id_col`
    is given and present. Empty rows and duplicate pairs are dropped and reported.
    """
    frame, used = _readers.locate_frame(source, sample=sample, allow_standin=allow_standin, hub_split=hub_split,
                                        hub_config=hub_config, hub_max_rows=hub_max_rows, seed=seed)
    dataset, report = _pairs_dataset(frame, Path(used.used).name, source_col, target_col, id_col)
    return _LoadedPairs(dataset, used, report)


def _pairs_dataset(frame: pd.DataFrame, where: str, source_col: str, target_col: str,
                   id_col: str | None = None) -> tuple[Any, _DropReport]:
    """One table of source -> target rows, checked and cleaned: (a `datasets.Dataset` with columns
    `source`, `target` and `id` when `id_col` is there, the drop report). One-line `DataError`s."""
    import datasets

    if frame.empty:
        raise DataError(f"{where} has no data rows; point DATA_SOURCE at a file with data.")
    missing = [c for c in (source_col, target_col) if c not in frame.columns]
    if missing:
        raise DataError(f"{where} has no column {', '.join(map(repr, missing))} (columns: "
                        f"{', '.join(map(str, frame.columns))}); set SOURCE_COL / TARGET_COL to the right names.")
    frame, report = _clean_pairs(frame, source_col, target_col)
    if frame.empty:
        raise DataError(f"No rows left in {where} after cleaning ({report.to_dict()['dropped']}); "
                        "check SOURCE_COL / TARGET_COL.")
    out = {"source": frame[source_col].str.strip(), "target": frame[target_col].str.strip()}
    if id_col and id_col in frame.columns:
        out["id"] = frame[id_col].map(_readers.id_string)
    return datasets.Dataset.from_pandas(pd.DataFrame(out), preserve_index=False), report


def _clean_pairs(frame: pd.DataFrame, source_col: str, target_col: str) -> tuple[pd.DataFrame, _DropReport]:
    """Drop rows with an empty source or target and exact duplicate pairs; report each; flag mojibake."""
    report = _DropReport(rows_read=len(frame))
    frame = frame.copy()
    for col in (source_col, target_col):  # a record or a list of numbers in a cell is refused, not stringified
        frame[col] = _readers.text_cells(frame[col], col)
    src_key, empty_src = _readers.text_keys(frame[source_col])
    tgt_key, tgt_empty = _readers.text_keys(frame[target_col])
    report.add("empty source", frame.loc[empty_src, target_col].tolist())
    empty_tgt = tgt_empty & ~empty_src
    report.add("empty target", frame.loc[empty_tgt, source_col].tolist())
    keep = ~empty_src & ~empty_tgt
    frame, key = frame[keep], _readers.combine_keys(src_key, tgt_key)[keep]
    duplicate = key.duplicated(keep="first")
    report.add("duplicate (same source and target)", frame.loc[duplicate, source_col].tolist())
    frame = frame[~duplicate]
    mojibake = frame[source_col].str.contains(_MOJIBAKE) | frame[target_col].str.contains(_MOJIBAKE)
    if mojibake.any():
        report.flagged["suspected mojibake (encoding damage)"] = int(mojibake.sum())
    return frame.reset_index(drop=True), report


def _random_split(dataset, *, validation_size: float = 0.1, test_size: float = 0.1, seed: int = 42):
    """Seeded train/validation/test split (80/10/10 by default) for data without labels -> `DatasetDict`."""
    import datasets

    n = len(dataset)
    n_val, n_test = round(n * validation_size), round(n * test_size)
    if n - n_val - n_test < 1 or (validation_size > 0 and n_val < 1) or (test_size > 0 and n_test < 1):
        raise DataError(f"{n} rows are too few to split into train/validation/test; add data.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return datasets.DatasetDict(train=dataset.select(sorted(order[n_val + n_test:])),
                                validation=dataset.select(sorted(order[:n_val])),
                                test=dataset.select(sorted(order[n_val:n_val + n_test])))


# --------------------------------------------------------------------- what was used (metrics.json)

def _fingerprint(splits) -> dict[str, Any]:
    """Row counts and a SHA-256 of the data actually used (every split's rows, in order), for metrics.json:
    two runs with the same fingerprint trained and were scored on the same data."""
    import hashlib
    import json

    if not isinstance(splits, dict):
        splits = {"data": splits}
    digest = hashlib.sha256()
    rows = {}
    for name in sorted(splits):
        split = splits[name]
        rows[name] = len(split)
        digest.update(name.encode())
        for column in sorted(split.column_names):
            digest.update(column.encode())
            for start in range(0, len(split), 50_000):  # in bounded chunks: millions of rows stay cheap
                part = split.select_columns([column])[start: start + 50_000][column]
                digest.update(json.dumps(list(part), ensure_ascii=False, default=str).encode())
    return {"rows": rows, "sha256": digest.hexdigest()}
