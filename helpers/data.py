"""Load any data source into a `datasets.Dataset`, clean it openly, split and cap it.

Resolution order (DESIGN.md section 5): a local file the user names; a Hub dataset id (when the
Hub is reachable or the dataset is cached); else, only when allowed, the project's generated
sample in the same layout, announced loudly. Every row dropped is counted with its reason.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import hub, samples

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples"

_FILE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt"}
_MOJIBAKE = re.compile(r"Ã.|â€|Â[^\w\s]|\ufffd")


class DataError(ValueError):
    """Bad or missing data. The message is one line: the problem, then the fix."""


@dataclass
class DataSource:
    """Where data came from: what was asked for and what was used."""

    requested: str | None
    used: str
    kind: str  # "file", "hub" or "sample"
    standin: bool = False
    encoding: str | None = None
    header: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DropReport:
    """What cleaning removed, by reason, with a few examples of each."""

    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # kept but worth knowing (e.g. mojibake)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())

    def add(self, reason: str, texts: list[str]) -> None:
        if texts:
            self.dropped[reason] = self.dropped.get(reason, 0) + len(texts)
            self.examples.setdefault(reason, []).extend(t[:80] for t in texts[:3])

    def summary(self) -> str:
        lines = [f"read {self.rows_read} rows, kept {self.rows_kept}"]
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


@dataclass
class LoadedData:
    """A cleaned dataset with standard columns `text` and `label` (a label name), plus provenance."""

    dataset: Any  # datasets.Dataset
    source: DataSource
    report: DropReport
    label_names: list[str]


# --------------------------------------------------------------------------- locating sources

def sample_path(name: str) -> Path:
    """Path of a generated sample (see `helpers.samples`); written on first use if missing."""
    if name not in samples.SAMPLES:
        raise DataError(f"No generated sample named {name!r}; known: {', '.join(samples.SAMPLES)}.")
    file_name, writer = samples.SAMPLES[name]
    path = SAMPLES_DIR / file_name
    if not path.exists():
        writer(path)
    return path


def find_local_file(source: str | Path) -> Path | None:
    """A path as given, else relative to the project root (notebooks run from `notebooks/`)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    return None


def looks_like_file(source: str) -> bool:
    s = str(source)
    return Path(s).suffix.lower() in _FILE_SUFFIXES or s.startswith((".", "/", "~")) or "\\" in s


def decode_bytes(raw: bytes) -> tuple[str, str]:
    """UTF-8 when valid (BOM tolerated), else latin-1 (the Kaggle PhraseBank file). Newlines normalized."""
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    return text.replace("\r\n", "\n").replace("\r", "\n"), ("utf-8" if encoding == "utf-8-sig" else encoding)


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def _first_row_is_header(first_row: list[str], wanted: set[str], label_values: set[str]) -> bool:
    cells = [c.strip() for c in first_row]
    if any(c in wanted for c in cells):
        return True
    if any(c.lower() in label_values for c in cells):
        return False
    return bool(cells) and all(_IDENTIFIER.match(c) for c in cells)


def read_table(path: str | Path, *, columns: list[str] | None = None, header: bool | None = None,
               label_values: list[str] | None = None, sep: str | None = None) -> tuple[pd.DataFrame, DataSource]:
    """Read CSV / TSV / JSONL / parquet into strings, detecting encoding and a missing header.

    `columns` names the columns of a headerless file (the Kaggle `all-data.csv` has none:
    `label,sentence`). `header=None` infers: a first row of bare identifiers, or one holding a
    wanted column name, is a header; a first row holding a label value is data.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    source = DataSource(requested=str(path), used=str(path), kind="file")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path), source
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror or err}); check the path and its permissions.") from err
    except Exception as err:  # pyarrow errors for broken parquet files
        raise DataError(f"Cannot read {path} as parquet ({err}); check the file or export it again.") from err
    if not raw.strip():
        raise DataError(f"{path} is empty; point DATA_SOURCE at a file with data rows.")
    text, encoding = decode_bytes(raw)
    source.encoding = encoding
    if suffix in (".jsonl", ".json"):
        try:
            frame = pd.read_json(io.StringIO(text), lines=suffix == ".jsonl" or text.lstrip()[:1] != "[",
                                 dtype=False)
        except ValueError as err:
            raise DataError(f"{path} is not valid JSON lines ({err}); one JSON object per line is expected.") from err
        return frame, source
    if suffix == ".txt" and text.lstrip().startswith("__label__"):
        return _read_fasttext(text, columns), source
    delimiter = sep or ("\t" if suffix == ".tsv" else ",")
    first_row = next(csv.reader(io.StringIO(text.split("\n", 1)[0]), delimiter=delimiter), [])
    if header is None:
        wanted = set(columns or [])
        header = _first_row_is_header(first_row, wanted, {v.lower() for v in label_values or []})
    source.header = header
    names = None
    if not header:
        if columns is None:
            names = [f"column_{i}" for i in range(len(first_row))]
        else:
            names = list(columns)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, header=0 if header else None, names=names,
                            dtype=str, keep_default_na=False, skipinitialspace=False)
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path} could not be parsed as {'TSV' if delimiter == chr(9) else 'CSV'} ({err}); "
                        "check the delimiter and quoting.") from err
    if header and columns and len(frame.columns) == len(columns) and not set(columns) <= set(frame.columns):
        # A header with other names than ours (e.g. `sentiment,text` or `result,content`): keep the
        # data, rename by position, and say so.
        print(f"note: {path.name} has header {list(frame.columns)}; using it as {list(columns)} by position")
        frame.columns = list(columns)
    return frame, source


_FASTTEXT = re.compile(r"^__label__(\S+)\s+(.*)$")


def _read_fasttext(text: str, columns: list[str] | None) -> pd.DataFrame:
    """fastText lines `__label__2 Title: text`. With three `columns` (label, title, text) the title
    is split off at the first ': ', else the whole line after the label is the text."""
    rows = []
    for line in text.split("\n"):
        match = _FASTTEXT.match(line.strip())
        if match:
            rows.append((match.group(1), match.group(2)))
    names = list(columns) if columns else ["label", "text"]
    if len(names) == 3:
        split = [(label, *body.split(": ", 1)) if ": " in body else (label, "", body) for label, body in rows]
        return pd.DataFrame(split, columns=names)
    return pd.DataFrame(rows, columns=names[:2])


# --------------------------------------------------------------------------- cleaning

def normalize_label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def check_columns(frame: pd.DataFrame, needed: list[str], where: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, frame.columns))}); "
            f"set TEXT_COL / LABEL_COL to the right names.")


def clean_labeled(frame: pd.DataFrame, text_col: str, label_col: str) -> tuple[pd.DataFrame, DropReport]:
    """Drop empty texts, missing labels, duplicates and texts with conflicting labels; report each.

    Texts are compared after whitespace normalization. A text seen with two different labels is
    ambiguous: all its copies go (keeping one would be a coin toss).
    """
    report = DropReport(rows_read=len(frame))
    frame = frame.copy()
    frame[text_col] = frame[text_col].fillna("").astype(str)
    key = frame[text_col].str.split().str.join(" ")

    empty = key.str.len() == 0
    report.add("empty text", frame.loc[empty, text_col].tolist())
    labels = frame[label_col]
    no_label = labels.isna() | (labels.astype(str).str.strip() == "")
    no_label &= ~empty
    report.add("missing label", frame.loc[no_label, text_col].tolist())
    frame, key = frame[~empty & ~no_label], key[~empty & ~no_label]

    label_norm = frame[label_col].map(normalize_label)
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


def encode_label_names(frame: pd.DataFrame, label_col: str, label_names: list[str] | None,
                       label_map: dict[Any, str] | None = None, where: str = "data") -> tuple[pd.Series, list[str]]:
    """Label column -> normalized label names, checked against `label_names`.

    `label_map` maps raw values to names (e.g. Amazon's CSV `{1: "negative", 2: "positive"}`).
    Integer labels 0..K-1 with `label_names` of length K are taken as indices into it.
    """
    raw = frame[label_col]
    if label_map:
        norm_map = {normalize_label(k): normalize_label(v) for k, v in label_map.items()}
        names = raw.map(normalize_label).map(lambda v: norm_map.get(v, v))
    else:
        names = raw.map(normalize_label)
    wanted = [normalize_label(n) for n in label_names] if label_names else sorted(names.unique())
    if label_names and not label_map:
        numeric = names.str.fullmatch(r"\d+")
        if numeric.all():
            ints = names.astype(int)
            # 0-based ids (Hub parquet) or 1-based ones (the original CSVs: stars 1-5, polarity 1/2).
            base = 0 if ints.min() == 0 else 1 if ints.max() == len(wanted) else None
            if base is None and ints.between(0, len(wanted) - 1).all():
                raise DataError(f"Integer labels in {label_col!r} of {where} hold neither 0 nor {len(wanted)}, so "
                                "it is unclear whether they count from 0 or 1; pass a label_map.")
            if base is not None and ints.between(base, len(wanted) - 1 + base).all():
                names = ints.map(lambda i: wanted[i - base])
        elif numeric.any() and not numeric.all():
            mixed = sorted(set(names[numeric]))[:3] + sorted(set(names[~numeric]))[:3]
            raise DataError(f"Label column {label_col!r} in {where} mixes numbers and names ({', '.join(mixed)}); "
                            "make the labels consistent or pass a label_map.")
    unknown = Counter(v for v in names if v not in wanted)
    if unknown:
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in unknown.most_common(5))
        raise DataError(f"Unknown label values in column {label_col!r} of {where}: {shown}; expected "
                        f"{', '.join(wanted)}. Set LABEL_COL to the label column or LABEL_NAMES to your labels.")
    return names, wanted


# --------------------------------------------------------------------------- the main entry point

def _load_hub_frame(dataset_id: str, split: str, config: str | None, max_rows: int | None = None,
                    seed: int = 42, shuffle_buffer: int = 10_000) -> pd.DataFrame:
    """A Hub split as a DataFrame. With `max_rows`, stream it: only the first shards are read, shuffled
    through a buffer, so a 4 GB dataset yields a random-ish subset without a full download."""
    import datasets

    if max_rows is None:
        return datasets.load_dataset(dataset_id, config, split=split).to_pandas()
    stream = datasets.load_dataset(dataset_id, config, split=split, streaming=True)
    rows = list(stream.shuffle(seed=seed, buffer_size=shuffle_buffer).take(max_rows))
    return pd.DataFrame(rows)


def text_columns(text_col: str) -> list[str]:
    """'title+content' -> ['title', 'content']: the text is built from several columns."""
    return [c.strip() for c in text_col.split("+") if c.strip()]


def build_text(frame: pd.DataFrame, text_col: str, *, join: str = ". ", unescape: bool = False) -> pd.Series:
    """The text column, or several joined with `join` (empty parts skipped); optionally turn the
    literal `\\n` escapes of the original Yelp/Amazon CSVs into real newlines."""
    parts = [frame[c].fillna("").astype(str).str.strip() for c in text_columns(text_col)]
    text = parts[0]
    for part in parts[1:]:
        sep = pd.Series(join, index=text.index).where((text != "") & (part != ""), "")
        text = text + sep + part
    if unescape:
        text = text.str.replace("\\n", "\n", regex=False).str.replace('\\"', '"', regex=False)
    return text


def locate_frame(source: str | Path | None, *, sample: str | None, allow_standin: bool = True,
                 columns: list[str] | None = None, header: bool | None = None, label_values: list[str] | None = None,
                 hub_split: str = "train", hub_config: str | None = None, hub_max_rows: int | None = None,
                 seed: int = 42) -> tuple[pd.DataFrame, DataSource]:
    """The raw table behind `source`: a local file, a Hub dataset (reachable or cached), or the
    generated `sample` (announced) when allowed. Raises a one-line `DataError` otherwise."""
    source_str = None if source is None else str(source)
    frame = None
    if source_str not in (None, "", "auto"):
        local = find_local_file(source_str)
        if local is not None:
            if local.is_dir():
                raise DataError(f"{local} is a folder; point DATA_SOURCE at a data file inside it.")
            frame, used = read_table(local, columns=columns, header=header, label_values=label_values)
            used.requested = source_str
        elif looks_like_file(source_str):
            raise DataError(f"Data file not found: {source_str} (looked in {Path.cwd()} and {PROJECT_ROOT}); "
                            "fix DATA_SOURCE, or set it to 'auto' for the generated sample.")
        elif hub.hub_available() or _hub_dataset_cached(source_str):
            frame = _load_hub_frame(source_str, hub_split, hub_config, hub_max_rows, seed)
            used = DataSource(requested=source_str, used=source_str, kind="hub")
        elif not allow_standin or sample is None:
            raise DataError(f"Dataset {source_str!r} is not reachable (no Hub access and not in the HF cache); "
                            "download it where the Hub is reachable and set DATA_SOURCE to the file, "
                            "or set ALLOW_STANDIN=True to use the generated sample.")
    if frame is None:
        if sample is None:
            raise DataError("No data source given; set DATA_SOURCE to a file or Hub dataset id.")
        path = sample_path(sample)
        hub.announce("OFFLINE STAND-IN DATA", [
            f"requested: {source_str or 'auto'}",
            f"using the generated sample {path.relative_to(PROJECT_ROOT)} (template sentences, same layout)",
            "metrics on it say the code works, not how good a model is; see data/README.md for real data",
        ])
        frame, used = read_table(path, columns=columns, header=header, label_values=label_values)
        used = DataSource(requested=source_str, used=str(path.relative_to(PROJECT_ROOT)), kind="sample",
                          standin=True, encoding=used.encoding, header=used.header)

    return frame, used


def load_labeled_data(source: str | Path | None, *, text_col: str = "text", label_col: str = "label",
                      label_names: list[str] | None = None, label_map: dict[Any, str] | None = None,
                      columns: list[str] | None = None, header: bool | None = None,
                      sample: str | None = None, allow_standin: bool = True, hub_split: str = "train",
                      hub_config: str | None = None, hub_max_rows: int | None = None, text_join: str = ". ",
                      unescape: bool = False, seed: int = 42) -> LoadedData:
    """Load a labeled text classification dataset from a file, the Hub, or the generated sample.

    `source`: a local file (CSV/TSV/JSONL/parquet/fastText .txt), a Hub dataset id, or "auto"/None
    for the generated sample named by `sample`. `text_col` may join columns ("title+content", with
    `text_join`). `hub_max_rows` streams a random subset of a large Hub split instead of
    downloading it all. Returns columns `text` and `label` (label *names*; map them to a model's ids
    with `to_label_ids`).
    """
    frame, used = locate_frame(source, sample=sample, allow_standin=allow_standin, columns=columns, header=header,
                               label_values=label_names, hub_split=hub_split, hub_config=hub_config,
                               hub_max_rows=hub_max_rows, seed=seed)
    where = Path(used.used).name
    if frame.empty:
        raise DataError(f"{where} has no data rows; point DATA_SOURCE at a file with data.")
    check_columns(frame, [*text_columns(text_col), label_col], where)
    frame = frame.assign(**{"__text__": build_text(frame, text_col, join=text_join, unescape=unescape)})
    text_col = "__text__"
    frame, report = clean_labeled(frame, text_col, label_col)
    if frame.empty:
        raise DataError(f"No rows left in {where} after cleaning ({report.to_dict()['dropped']}); check TEXT_COL.")
    names, label_names = encode_label_names(frame, label_col, label_names, label_map, where)
    out = pd.DataFrame({"text": frame[text_col].astype(str).str.strip(), "label": names})
    import datasets

    return LoadedData(datasets.Dataset.from_pandas(out, preserve_index=False), used, report, label_names)


def _hub_dataset_cached(dataset_id: str) -> bool:
    """True when `datasets` has this dataset in its local cache (so it loads without the Hub)."""
    import datasets
    from huggingface_hub import constants

    hub_copy = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}"
    arrow_copy = Path(datasets.config.HF_DATASETS_CACHE)
    return hub_copy.is_dir() or any(arrow_copy.glob(f"{dataset_id.replace('/', '___')}*"))


# --------------------------------------------------------------------------- splits, caps, ids

def stratified_split(dataset, *, label_col: str = "label", validation_size: float = 0.1, test_size: float = 0.1,
                     seed: int = 42):
    """Seeded, stratified train/validation/test split (80/10/10 by default) -> `DatasetDict`."""
    import datasets
    from sklearn.model_selection import train_test_split

    labels = list(dataset[label_col])
    counts = Counter(labels)
    rare = [k for k, n in counts.items() if n < 3]
    if rare:
        raise DataError(f"Labels {rare} have fewer than 3 rows, too few to split three ways; "
                        "add data or drop those labels.")
    index = list(range(len(dataset)))
    train_idx, rest_idx = train_test_split(index, test_size=validation_size + test_size, random_state=seed,
                                           stratify=labels)
    rest_labels = [labels[i] for i in rest_idx]
    val_idx, test_idx = train_test_split(rest_idx, test_size=test_size / (validation_size + test_size),
                                         random_state=seed, stratify=rest_labels)
    return datasets.DatasetDict(train=dataset.select(train_idx), validation=dataset.select(val_idx),
                                test=dataset.select(test_idx))


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
    """
    import datasets

    lookup = {normalize_label(k): v for k, v in label2id.items()}
    missing = sorted(set(dataset[label_col]) - set(lookup))
    if missing:
        raise DataError(f"Labels {missing} are not in the model's label map {sorted(lookup)}; "
                        "pass the dataset's label names when loading the model.")
    names = [name for name, _ in sorted(lookup.items(), key=lambda kv: kv[1])]
    return dataset.cast_column(label_col, datasets.ClassLabel(names=names))


def label_counts(dataset, label_col: str = "label") -> dict[str, int]:
    return dict(sorted(Counter(dataset[label_col]).items()))


# --------------------------------------------------------------------------- source -> target pairs (summarization)

@dataclass
class LoadedPairs:
    """A cleaned dataset with columns `source` and `target` (and `id` when the data has one), plus provenance."""

    dataset: Any  # datasets.Dataset
    source: DataSource
    report: DropReport


def clean_pairs(frame: pd.DataFrame, source_col: str, target_col: str) -> tuple[pd.DataFrame, DropReport]:
    """Drop rows with an empty source or target and exact duplicate pairs; report each; flag mojibake."""
    report = DropReport(rows_read=len(frame))
    frame = frame.copy()
    for col in (source_col, target_col):
        frame[col] = frame[col].fillna("").astype(str)
    src_key = frame[source_col].str.split().str.join(" ")
    tgt_key = frame[target_col].str.split().str.join(" ")
    empty_src = src_key.str.len() == 0
    report.add("empty source", frame.loc[empty_src, target_col].tolist())
    empty_tgt = (tgt_key.str.len() == 0) & ~empty_src
    report.add("empty target", frame.loc[empty_tgt, source_col].tolist())
    keep = ~empty_src & ~empty_tgt
    frame, src_key, tgt_key = frame[keep], src_key[keep], tgt_key[keep]
    duplicate = (src_key + "\x00" + tgt_key).duplicated(keep="first")
    report.add("duplicate (same source and target)", frame.loc[duplicate, source_col].tolist())
    frame = frame[~duplicate]
    mojibake = frame[source_col].str.contains(_MOJIBAKE) | frame[target_col].str.contains(_MOJIBAKE)
    if mojibake.any():
        report.flagged["suspected mojibake (encoding damage)"] = int(mojibake.sum())
    return frame.reset_index(drop=True), report


def load_text_pairs(source: str | Path | None, *, source_col: str = "text", target_col: str = "summary",
                    id_col: str | None = None, sample: str | None = None, allow_standin: bool = True,
                    hub_split: str = "train", hub_config: str | None = None, hub_max_rows: int | None = None,
                    seed: int = 42) -> LoadedPairs:
    """Load source -> target pairs (summarization) from a file, the Hub, or the generated sample.

    Returns columns `source`, `target` (stripped strings) and `id` (as a string) when `id_col`
    is given and present. Empty rows and duplicate pairs are dropped and reported.
    """
    frame, used = locate_frame(source, sample=sample, allow_standin=allow_standin, hub_split=hub_split,
                               hub_config=hub_config, hub_max_rows=hub_max_rows, seed=seed)
    where = Path(used.used).name
    if frame.empty:
        raise DataError(f"{where} has no data rows; point DATA_SOURCE at a file with data.")
    missing = [c for c in (source_col, target_col) if c not in frame.columns]
    if missing:
        raise DataError(f"{where} has no column {', '.join(map(repr, missing))} (columns: "
                        f"{', '.join(map(str, frame.columns))}); set SOURCE_COL / TARGET_COL to the right names.")
    frame, report = clean_pairs(frame, source_col, target_col)
    if frame.empty:
        raise DataError(f"No rows left in {where} after cleaning ({report.to_dict()['dropped']}); "
                        "check SOURCE_COL / TARGET_COL.")
    out = {"source": frame[source_col].str.strip(), "target": frame[target_col].str.strip()}
    if id_col and id_col in frame.columns:
        out["id"] = frame[id_col].map(_id_string)
    import datasets

    return LoadedPairs(datasets.Dataset.from_pandas(pd.DataFrame(out), preserve_index=False), used, report)


def _id_string(value: Any) -> str:
    """Ids as strings; JSON numbers too (a column with a missing id is read as floats: 7.0 -> "7")."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def random_split(dataset, *, validation_size: float = 0.1, test_size: float = 0.1, seed: int = 42):
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


def fingerprint(splits) -> dict[str, Any]:
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
            digest.update(json.dumps(list(split[column]), ensure_ascii=False, default=str).encode())
    return {"rows": rows, "sha256": digest.hexdigest()}
