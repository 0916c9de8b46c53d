"""The readers behind `helpers.data`'s loading entry points: every file layout users bring, read into a table.

`helpers.data` (what a notebook teaches: load, clean, split, tokenize) calls these; nothing here cleans or splits.
The import graph is one-way: `data` imports this module, this module imports nothing from `data`.

- locating a source: a local file, folder or archive, a Hub dataset id (reachable or cached), or the generated
  sample (announced);
- one file: CSV / TSV (delimiter, header and encoding sniffed, stray quotes undone), JSON lines with broken lines,
  parquet, an Excel sheet (title rows above the table), fastText and `sentence@label` text, gzip / zip;
- text columns (`title+content`, lists of words) and label values as files write them (`1` / `01` / `1.0`,
  0- or 1-based ids, `value=name` pairs);
- folders: split files (`train.csv`, `dev.tsv`, an `hf download` folder's `data/train-00000-of-00004.parquet`),
  `save_to_disk` folders, parts of one table, archives (`.tar.gz`, zip);
- text classification as class folders: one folder per label, one text file per example, as IMDB's `aclImdb/`
  (`train/pos`, `train/neg`, `train/unsup`, `test/...`, with `README` and `imdb.vocab` beside), 20 Newsgroups
  (`20news-bydate-train/alt.atheism/49960`), BBC News (`bbc/business/001.txt`) and what scikit-learn's
  `load_files` and Keras' `text_dataset_from_directory` read. Each split becomes one table (`text`, `label` = the
  folder's name, `file`); unlabelled folders (`unsup`) and files that are not examples are left out and counted,
  never read as a class;
- source -> target pairs as released: XSum's `.summary` files with its split file, `.source` / `.target` lines.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._offline import hub, samples
from ._paths import PROJECT_ROOT, SAMPLES_DIR

# ------------------------------------------------------------------------- shared with helpers.data

class DataError(ValueError):
    """Bad or missing data. The message is one line: the problem, then the fix."""


@dataclass
class DataSource:
    """Where data came from: what was asked for and what was used."""

    requested: str | None
    used: str
    kind: str  # "file", "folder", "hub" or "sample"
    standin: bool = False
    encoding: str | None = None
    header: bool | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)  # lines that could not be read, by reason
    layout: str | None = None  # how a folder was read when its columns are the reader's own ("class folders")
    parts: list[str] = field(default_factory=list)  # what a folder's split was read from (`dev.tsv`, `aclImdb/test`)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()
               if k not in ("skipped", "parts") and not (k == "layout" and v is None)}
        if self.skipped:
            out["skipped"] = {reason: len(lines) for reason, lines in self.skipped.items()}
        return out


def decode_bytes(raw: bytes) -> tuple[str, str]:
    """UTF-16 with a BOM (Excel's "Unicode text"), UTF-8 when valid (BOM tolerated), else latin-1 (the
    Kaggle PhraseBank file). Newlines normalized."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ("utf-16",)
    elif len(raw) > 3 and raw[1:4:2] == b"\x00\x00" and raw[0:4:2] != b"\x00\x00":
        candidates = ("utf-16-le", "utf-8-sig", "latin-1")  # UTF-16 without a BOM: every other byte NUL
    else:
        candidates = ("utf-8-sig", "latin-1")
    for encoding in candidates:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    name = {"utf-8-sig": "utf-8"}.get(encoding, encoding)
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n"), name


_FILE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt", ".xlsx", ".xlsm"}


# -------------------------------------------------------------------------------- locating a source

def sample_path(name: str) -> Path:
    """Path of a generated sample (see `helpers._offline.samples`); written on first use if missing."""
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


def hub_dataset_cached(dataset_id: str) -> bool:
    """True when `datasets` has this dataset in its local cache (so it loads without the Hub)."""
    import datasets
    from huggingface_hub import constants

    hub_copy = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}"
    arrow_copy = Path(datasets.config.HF_DATASETS_CACHE)
    return hub_copy.is_dir() or any(arrow_copy.glob(f"{dataset_id.replace('/', '___')}*"))


def load_hub_frame(dataset_id: str, split: str, config: str | None, max_rows: int | None = None,
                    seed: int = 42, shuffle_buffer: int = 10_000) -> pd.DataFrame:
    """A Hub split as a DataFrame. With `max_rows`, stream it: only the first shards are read, shuffled
    through a buffer, so a 4 GB dataset yields a random-ish subset without a full download."""
    import datasets

    where = f"{dataset_id} ({split})"
    if max_rows is None:
        loaded = datasets.load_dataset(dataset_id, config, split=split)
        return with_label_names(loaded.to_pandas(), loaded.features, where)
    stream = datasets.load_dataset(dataset_id, config, split=split, streaming=True)
    rows = list(stream.shuffle(seed=seed, buffer_size=shuffle_buffer).take(max_rows))
    return with_label_names(pd.DataFrame(rows), stream.features, where)


def with_label_names(frame: pd.DataFrame, features, where: str) -> pd.DataFrame:
    """`frame` with each `datasets.ClassLabel` column holding the dataset's own label *names*, not their ids.

    `.to_pandas()` turns a ClassLabel's `positive` into its id 0; a LABEL_NAMES in another order would then
    rename the classes by position and train on swapped labels. With the names, the data's own names win and
    LABEL_NAMES is matched to them by name (refused when the names differ). -1 (no label, as the Hub's test
    splits have) becomes an empty cell: a missing label."""
    import datasets

    for name, feature in dict(features or {}).items():
        if not isinstance(feature, datasets.ClassLabel) or name not in frame.columns or not feature.names:
            continue
        names = [str(n) for n in feature.names]
        codes = pd.to_numeric(frame[name], errors="coerce").fillna(-1).to_numpy().astype(np.int64)
        codes = np.where((codes >= 0) & (codes < len(names)), codes, -1)
        frame[name] = np.array([*names, None], dtype=object)[codes]  # id -1 picks the last entry: None
        shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:6])) + (", ..." if len(names) > 6 else "")
        print(f"note: column {name!r} of {where} is a ClassLabel: its ids read as the dataset's own label names "
              f"({shown})")
    return frame


def locate_frames(source: str | Path | None, *, sample: str | None, allow_standin: bool = True,
                  columns: list[str] | None = None, header: bool | None = None, label_values: list[str] | None = None,
                  hub_split: str = "train", hub_config: str | None = None, hub_max_rows: int | None = None,
                  seed: int = 42, wanted: list[str] | None = None, label_col: str | None = None,
                  every_split: bool = False) -> dict[str, tuple[pd.DataFrame, DataSource]]:
    """{split: (raw table, source)} behind `source`, `hub_split` first: a local file, folder or archive, a Hub
    dataset (reachable or cached), or the generated `sample` (announced) when allowed. With `every_split`, a
    folder's or archive's other splits come too (its `dev.tsv`, `test/`). One-line `DataError` otherwise."""
    source_str = None if source is None else str(source)
    options = {"columns": columns, "header": header, "label_values": label_values, "wanted": wanted,
               "label_col": label_col}
    if source_str not in (None, "", "auto"):
        local = find_local_file(source_str)
        if local is not None:
            if local.is_dir() or is_archive(local):
                read = folder_splits if local.is_dir() else archive_splits
                parts = read(local, hub_split, every=every_split, **options)
            else:
                parts = {hub_split: read_table(local, **options)}
            for _, used in parts.values():
                used.requested = source_str
            return parts
        if looks_like_file(source_str):
            raise DataError(f"Data file not found: {source_str} (looked in {Path.cwd()} and {PROJECT_ROOT}); "
                            "fix DATA_SOURCE, or set it to 'auto' for the generated sample.")
        if hub.hub_available() or hub_dataset_cached(source_str):
            frame = load_hub_frame(source_str, hub_split, hub_config, hub_max_rows, seed)
            return {hub_split: (frame, DataSource(requested=source_str, used=source_str, kind="hub"))}
        if not allow_standin or sample is None:
            raise DataError(f"Dataset {source_str!r} is not reachable (no Hub access and not in the HF cache); "
                            "download it where the Hub is reachable and set DATA_SOURCE to the file, "
                            "or set ALLOW_STANDIN=True to use the generated sample.")
    if sample is None:
        raise DataError("No data source given; set DATA_SOURCE to a file or Hub dataset id.")
    path = sample_path(sample)
    hub.announce("OFFLINE STAND-IN DATA", [
        f"requested: {source_str or 'auto'}",
        f"using the generated sample {path.relative_to(PROJECT_ROOT)} (template sentences, same layout)",
        "metrics on it say the code works, not how good a model is; see data/README.md for real data",
    ])
    frame, used = read_table(path, **options)
    return {hub_split: (frame, DataSource(requested=source_str, used=str(path.relative_to(PROJECT_ROOT)),
                                          kind="sample", standin=True, encoding=used.encoding, header=used.header))}


def locate_frame(source: str | Path | None, *, sample: str | None, allow_standin: bool = True,
                 columns: list[str] | None = None, header: bool | None = None, label_values: list[str] | None = None,
                 hub_split: str = "train", hub_config: str | None = None, hub_max_rows: int | None = None,
                 seed: int = 42, wanted: list[str] | None = None,
                 label_col: str | None = None) -> tuple[pd.DataFrame, DataSource]:
    """The raw table behind `source` (its `hub_split`; see `locate_frames`)."""
    return locate_frames(source, sample=sample, allow_standin=allow_standin, columns=columns, header=header,
                         label_values=label_values, hub_split=hub_split, hub_config=hub_config,
                         hub_max_rows=hub_max_rows, seed=seed, wanted=wanted, label_col=label_col)[hub_split]


# ----------------------------------------------------------------------------------------- one file

_IDENTIFIER = re.compile(r"^[A-Za-z_#][A-Za-z0-9_]{0,40}$")


# Header names whose role is clear: a file with such a header in the recipe's column order (e.g. PhraseBank's
# `sentiment,text`) is a known variant of the recipe's layout and may be renamed by position.
LABEL_LIKE = {"label", "labels", "sentiment", "result", "class", "category", "polarity", "stars", "star", "rating",
              "target", "y", "topic", "gold_label", "quality"}


TEXT_LIKE = {"text", "sentence", "sentences", "content", "review", "reviews", "title", "body", "description",
             "document", "headline", "comment", "tweet", "question", "answer", "premise", "hypothesis",
             "sentence1", "sentence2", "text_a", "text_b", "summary", "abstract", "input", "output"}


_COMPRESSED = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip"}


def read_table(path: str | Path, *, columns: list[str] | None = None, header: bool | None = None,
               label_values: list[str] | None = None, sep: str | None = None, wanted: list[str] | None = None,
               label_col: str | None = None) -> tuple[pd.DataFrame, DataSource]:
    """Read CSV / TSV / JSONL / parquet (also gzip- or zip-compressed) or an Excel sheet (.xlsx) into a table.

    Detects the encoding (UTF-8, UTF-16 with a BOM, else latin-1), the delimiter and a missing header.
    `columns` names the columns of a headerless file (the Kaggle `all-data.csv` has none:
    `label,sentence`). `header=None` infers: a first row of bare identifiers, or one holding a
    `wanted` column name, is a header; a first row holding a label value is data. A header is
    renamed to `columns` by position only when it is a known variant of that layout (its label
    column where `label_col` is, its text columns elsewhere) and lacks the `wanted` columns: the
    user's own names always win. TSV is read GLUE-style (no quote processing) unless clearly
    quoted; lines that cannot be read are listed in `DataSource.skipped`, never dropped silently.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    source = DataSource(requested=str(path), used=str(path), kind="file")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path), source
        if suffix in (".xlsx", ".xlsm"):
            return _read_excel(path, columns, header, wanted, label_values), source
        if suffix in (".xls", ".ods", ".numbers"):
            raise DataError(f"{path.name} is a {suffix} spreadsheet, which is not read here; save it as .xlsx or "
                            "as CSV (UTF-8) and set DATA_SOURCE to that file.")
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror or err}); check the path and its permissions.") from err
    except Exception as err:  # pyarrow errors for broken parquet files
        raise DataError(f"Cannot read {path} as parquet ({err}); check the file or export it again.") from err
    raw, inner = _decompress(raw, path)
    if inner:
        suffix = Path(inner).suffix.lower() or suffix
    elif suffix in (".gz", ".zip"):
        suffix = Path(path.stem).suffix.lower() or ".csv"
    if not raw.strip():
        raise DataError(f"{path} is empty; point DATA_SOURCE at a file with data rows.")
    text, encoding = decode_bytes(raw)
    source.encoding = encoding
    if "\x00" in text[:4096]:
        raise DataError(f"{path} looks binary (NUL bytes), not text; export it as CSV, TSV, JSON lines or parquet.")
    if suffix in (".jsonl", ".json"):
        frame, source.skipped = read_json_records(text, path)
        return frame, source
    if suffix == ".txt" and text.lstrip().startswith("__label__"):
        return _read_fasttext(text, columns), source
    if suffix == ".txt" and _at_labeled(text):
        frame, skipped = _read_at_labeled(text, columns, label_col)
        source.skipped = skipped
        print(f"note: {path.name} holds `sentence@label` lines (the original Financial PhraseBank release); "
              f"read as columns {list(frame.columns)}")
        return frame, source
    return _read_csv_text(text, path, suffix, source, columns=columns, header=header, label_values=label_values,
                          sep=sep, wanted=wanted, label_col=label_col)


def _first_row_is_header(first_row: list[str], wanted: set[str], label_values: set[str]) -> bool:
    cells = [c.strip() for c in first_row]
    if any(c in wanted for c in cells):
        return True
    if any(c.lower() in label_values or re.fullmatch(r"-?\d+(\.\d+)?", c) for c in cells):
        return False
    return bool(cells) and all(_IDENTIFIER.match(c) for c in cells)


def _decompress(raw: bytes, path: Path) -> tuple[bytes, str | None]:
    """gzip / zip content (whatever the file is called), as pandas reads it; the inner file's name for a zip."""
    kind = next((k for magic, k in _COMPRESSED.items() if raw.startswith(magic)), None)
    if kind == "gzip":
        import gzip

        try:
            return gzip.decompress(raw), None
        except OSError as err:
            raise DataError(f"{path} looks gzip-compressed but cannot be unpacked ({err}); check the file.") from err
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
            if len(members) != 1:
                raise DataError(f"{path} is a zip archive holding {len(members)} files ({', '.join(members[:4])}); "
                                "unzip it and set DATA_SOURCE to the one data file.")
            return archive.read(members[0]), members[0]
    return raw, None


def _sniff_delimiter(first_line: str, default: str) -> str:
    """The delimiter of a delimited file: the expected one when its first line has it, else `;` `\\t` or `|`."""
    if default in first_line:
        return default
    counts = {d: first_line.count(d) for d in (";", "\t", "|", ",") if d != default}
    best = max(counts, key=counts.get)
    return best if counts[best] else default


def _physical_lines(text: str) -> list[str]:
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_unquoted(text: str, delimiter: str, header: bool, names: list[str] | None
                   ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """GLUE-style TSV: one record per line, no quote processing, so a stray `"` cannot merge rows.
    Lines with another number of fields than the header are set aside (reported, never dropped silently)."""
    rows = [line.split(delimiter) for line in _physical_lines(text) if line.strip()]
    columns = [c.strip() for c in rows.pop(0)] if header else list(names or [])
    width = len(columns) if columns else max((len(r) for r in rows), default=0)
    if not columns:
        columns = [f"column_{i}" for i in range(width)]
    good = [r for r in rows if len(r) == width]
    bad = [delimiter.join(r) for r in rows if len(r) != width]
    reason = f"malformed line (not {width} {'tab-' if delimiter == chr(9) else ''}separated fields)"
    return pd.DataFrame(good, columns=columns, dtype=str), ({reason: bad} if bad else {})


def _merged_records(text: str, delimiter: str, width: int) -> int:
    """How many lines a stray quote swallowed: lines inside a multi-line field that are records themselves
    (the right number of fields, and a first or last field seen as such in ordinary one-line records)."""
    lines = _physical_lines(text)
    one_line = [r for r in csv.reader(lines, delimiter=delimiter) if len(r) == width]
    firsts, lasts = {r[0] for r in one_line}, {r[-1] for r in one_line}
    swallowed = 0
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    for record in reader:
        for field_text in record:
            if "\n" not in field_text:
                continue
            for inner in field_text.split("\n")[1:]:
                cells = next(csv.reader([inner], delimiter=delimiter), [])
                if len(cells) == width and ((len(firsts) <= 50 and cells[0] in firsts)
                                            or (len(lasts) <= 50 and cells[-1] in lasts)):
                    swallowed += 1
    return swallowed


def _read_line_by_line(text: str, delimiter: str, header: bool, names: list[str] | None
                       ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One record per physical line (quotes honoured within a line): undoes rows merged by a stray quote."""
    rows = [next(csv.reader([line], delimiter=delimiter), []) for line in _physical_lines(text) if line.strip()]
    columns = [c.strip() for c in rows.pop(0)] if header else list(names or [])
    width = len(columns) if columns else max((len(r) for r in rows), default=0)
    columns = columns or [f"column_{i}" for i in range(width)]
    good = [r for r in rows if len(r) == width]
    bad = [delimiter.join(r) for r in rows if len(r) != width]
    return (pd.DataFrame(good, columns=columns, dtype=str),
            {f"malformed line (not {width} fields)": bad} if bad else {})


def _clearly_quoted(text: str, delimiter: str) -> bool:
    """A TSV written by a CSV writer with quoting: most lines start with a quote or hold `<tab>"`."""
    sample = [line for line in text.split("\n", 200)[:200] if line.strip()]
    quoted = sum(line.startswith('"') or f'{delimiter}"' in line for line in sample)
    return bool(sample) and quoted >= 0.5 * len(sample)


def _read_delimited(text: str, path: Path, delimiter: str, header: bool, names: list[str] | None
                    ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """CSV/TSV text -> strings, every physical record accounted for."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    if delimiter == "\t" and not _clearly_quoted(text, delimiter):
        return _read_unquoted(text, delimiter, header, names)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, header=0 if header else None, names=names,
                            dtype=str, keep_default_na=False, skipinitialspace=False)
    except pd.errors.ParserError as err:
        if "EOF inside string" not in str(err):
            raise DataError(f"{path} could not be parsed as {kind} ({str(err).strip()}); check the delimiter "
                            "and quoting.") from err
        print(f"note: {path.name}: a quote opened and never closed ({str(err).strip()}); reading one record per line")
        return _read_line_by_line(text, delimiter, header, names)
    except ValueError as err:
        raise DataError(f"{path} could not be parsed as {kind} ({err}); check the delimiter and quoting.") from err
    records = len(frame) + (1 if header else 0)
    lines = sum(1 for line in _physical_lines(text) if line.strip())
    if lines > records and '"' in text:  # fewer records than lines: quoted newlines, or a stray quote?
        swallowed = _merged_records(text, delimiter, len(frame.columns))
        if swallowed:
            print(f"note: {path.name}: a stray quote merged {swallowed} lines into other rows; "
                  "reading one record per line")
            return _read_line_by_line(text, delimiter, header, names)
    return frame, {}


def _read_csv_text(text: str, path: Path, suffix: str, source: DataSource, *, columns: list[str] | None,
                   header: bool | None, label_values: list[str] | None, sep: str | None, wanted: list[str] | None,
                   label_col: str | None) -> tuple[pd.DataFrame, DataSource]:
    """The delimited-text half of `read_table`: delimiter sniffed, header inferred, a known variant of the
    recipe's header renamed by position (said), unreadable lines in `source.skipped`."""
    csv.field_size_limit(2**31 - 1)  # long documents: the csv module's default caps a field at 128 KB
    first_line = text.split("\n", 1)[0]
    delimiter = sep or _sniff_delimiter(first_line, "\t" if suffix == ".tsv" else ",")
    if delimiter != (sep or ("\t" if suffix == ".tsv" else ",")):
        print(f"note: {path.name} is separated by {delimiter!r}, not {'tabs' if suffix == '.tsv' else 'commas'}; "
              "reading it that way")
    first_row = next(csv.reader([first_line], delimiter=delimiter), [])
    if header is None:
        header = _first_row_is_header(first_row, set(wanted or []) | set(columns or []),
                                      {v.lower() for v in label_values or []})
    source.header = header
    names = None
    if not header:
        same_width = columns is not None and len(columns) == len(first_row)
        names = list(columns) if same_width else [f"column_{i}" for i in range(len(first_row))]
    frame, source.skipped = _read_delimited(text, path, delimiter, header, names)
    if header and columns and _is_known_variant(list(frame.columns), columns, label_col) and not (
            set(wanted or columns) <= set(frame.columns)):
        # A header with other names than ours, in our layout (e.g. `sentiment,text` or `result,content`):
        # keep the data, rename by position, and say so.
        print(f"note: {path.name} has header {list(frame.columns)}; reading it as {list(columns)} (same layout)")
        frame.columns = list(columns)
    return frame, source


def _read_excel(path: Path, columns: list[str] | None, header: bool | None, wanted: list[str] | None,
                label_values: list[str] | None) -> pd.DataFrame:
    """The first sheet of an Excel workbook (the others are named), as read_table reads a CSV: cells as
    strings where they are text, a missing header detected the same way."""
    try:
        # keep_default_na=False: `NA` (North America), `None` or `null` are values, as the CSV reader keeps them;
        # only blank cells are missing
        sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object, keep_default_na=False,
                               na_values=[""])
    except Exception as err:  # noqa: BLE001 - openpyxl raises many kinds for damaged or protected files
        raise DataError(f"Cannot read {path} as an Excel workbook ({err}); open it in Excel and save it again, or "
                        "export the sheet as CSV.") from err
    name, raw = next(iter(sheets.items()))
    raw = raw.dropna(how="all").dropna(axis=1, how="all")  # blank rows and columns around the table
    if raw.empty:
        raise DataError(f"The first sheet of {path} ({name!r}) is empty; put the table on the first sheet.")
    if len(sheets) > 1:
        print(f"note: {path.name} has {len(sheets)} sheets ({', '.join(map(str, sheets))}); "
              f"reading the first, {name!r}")
    rows = [["" if pd.isna(v) else str(v).strip() for v in raw.iloc[i]] for i in range(min(10, len(raw)))]
    at = next((i for i, row in enumerate(rows) if wanted and set(wanted) <= set(row)), 0)
    if at:  # a title or notes above the table: its header is the first row that names the wanted columns
        print(f"note: {path.name}: the table's header is on row {raw.index[at] + 1} of the sheet; "
              f"the {at} row{'s' if at > 1 else ''} above it skipped")
        raw, header = raw.iloc[at:], True
    first_row = ["" if pd.isna(v) else str(v) for v in raw.iloc[0]]
    if header is None:
        header = _first_row_is_header(first_row, set(wanted or []) | set(columns or []),
                                      {v.lower() for v in label_values or []})
    if header:
        frame = raw.iloc[1:].reset_index(drop=True)
        frame.columns = [c.strip() or f"column_{i}" for i, c in enumerate(first_row)]
    else:
        frame = raw.reset_index(drop=True)
        same_width = columns is not None and len(columns) == frame.shape[1]
        frame.columns = list(columns) if same_width else [f"column_{i}" for i in range(frame.shape[1])]
    return frame


def _is_known_variant(found: list[str], layout: list[str], label_col: str | None) -> bool:
    """True when `found` is the recipe's `layout` under other names: same width, the label-like name where
    the layout has its label column, text-like names elsewhere."""
    if len(found) != len(layout) or label_col not in layout:
        return False
    for name, ours in zip(found, layout):
        name = str(name).strip().lower()
        role_ok = name in LABEL_LIKE if ours == label_col else name in TEXT_LIKE
        if not role_ok:
            return False
    return True


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


_AT_LABEL = re.compile(r"^(.*\S)\s*@([A-Za-z][\w-]*)\s*$")


def _at_labeled(text: str) -> bool:
    """True for `sentence@label` lines, as in the Financial PhraseBank's own Sentences_*Agree.txt files."""
    lines = [line for line in text.split("\n")[:200] if line.strip()]
    return bool(lines) and sum(bool(_AT_LABEL.match(line.strip())) for line in lines) >= 0.9 * len(lines)


def _read_at_labeled(text: str, columns: list[str] | None, label_col: str | None
                     ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """`sentence@label` lines split at their last `@`; named by the recipe's two `columns` when given
    (PhraseBank: label, sentence), else text, label. Lines without a label are reported, not dropped silently."""
    rows, unread = [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        match = _AT_LABEL.match(line.strip())
        if match:
            rows.append((match.group(2), match.group(1)))
        else:
            unread.append(f"line {number}: {line.strip()[:80]}")
    label_name, text_name = "label", "text"
    if columns and len(columns) == 2:
        label_name = label_col if label_col in columns else columns[0]
        text_name = next(c for c in columns if c != label_name)
    frame = pd.DataFrame(rows, columns=[label_name, text_name])
    return frame, ({"no @label at the end of the line": unread} if unread else {})


# --------------------------------------------------------------------------------------- JSON lines

def read_json_records(text: str, path: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """JSON lines (or one JSON array) as a table, for `read_table`. A line that is not a JSON object is set
    aside and reported with its number, as a CSV's bad lines are, instead of refusing the whole file at a byte
    position; a broken JSON array is refused naming its line and column."""
    lines = text.lstrip()[:1] != "["
    try:
        return pd.read_json(io.StringIO(text), lines=lines, dtype=False), {}
    except ValueError as err:
        if not lines:
            try:
                json.loads(text)
            except ValueError as bad:
                where = f"line {bad.lineno}, column {bad.colno}: {bad.msg}" if hasattr(bad, "lineno") else str(bad)
                raise DataError(f"{path} is not valid JSON ({where}); fix that line, or write one JSON object per "
                                "line (.jsonl).") from err
            raise DataError(f"{path} is not a JSON array of records ({err}); write one JSON object per line.") from err
    rows, bad_lines, first = [], [], None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            record, why = None, err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        else:
            why = f"a JSON {type(record).__name__}, not an object"
        if isinstance(record, dict):
            rows.append(record)
        else:
            bad_lines.append(f"line {number}: {line.strip()[:80]}")
            first = first or f"line {number} ({why})"
    if not bad_lines:
        return pd.DataFrame(rows), {}
    if not rows:
        raise DataError(f"{path} is not JSON lines: {first} and no other line is a JSON object; write one JSON "
                        "object per line.")
    print(f"note: {path.name}: {first} is not a JSON object; {len(bad_lines):,} such "
          f"line{'s' if len(bad_lines) > 1 else ''} set aside (reported as dropped), {len(rows):,} read")
    return pd.DataFrame(rows), {"line that is not a JSON object (unreadable JSON)": bad_lines}


# ---------------------------------------------- text columns, and texts at scale (Arrow, hash keys)

def suggest_columns(columns: list[str]) -> str:
    """'TEXT_COL="review", LABEL_COL="sentiment"' guessed from a file's header, or ''."""
    lowered = {str(c).strip().lower(): str(c) for c in columns}
    label = next((lowered[n] for n in lowered if n in LABEL_LIKE), None)
    texts = [lowered[n] for n in lowered if n in TEXT_LIKE]
    if not label or not texts:
        return ""
    hint = f'TEXT_COL="{texts[0]}", LABEL_COL="{label}"'
    if len(texts) == 2:
        hint += f' (or TEXT_PAIR_COL="{texts[1]}" for sentence pairs)'
    return f" (here perhaps {hint})"


def check_columns(frame: pd.DataFrame, needed: list[str], where: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        raise DataError(
            f"{where} has no column {', '.join(map(repr, missing))} (columns: {', '.join(found)}); "
            f"set TEXT_COL / LABEL_COL to the right names{suggest_columns(found)}.")


def text_columns(text_col: str) -> list[str]:
    """'title+content' -> ['title', 'content']: the text is built from several columns."""
    return [c.strip() for c in text_col.split("+") if c.strip()]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


_CONTAINERS = (dict, list, tuple, np.ndarray)


def _refuse_containers(column: pd.Series, name: str) -> None:
    """Refuse a text column with a record or a list in some row (a JSON lines file whose `text` is an object in
    row 7): stringified, `"{'a': 1}"` would be trained on as if it were text. Names the column and the row."""
    if pd.api.types.infer_dtype(column, skipna=True) in ("string", "empty"):
        return  # text throughout (checked in C, not per Python object)
    bad = np.flatnonzero(column.map(lambda v: isinstance(v, _CONTAINERS)).to_numpy(dtype=bool))
    if len(bad):
        value = column.iloc[bad[0]]
        what = "records (JSON objects)" if isinstance(value, dict) else "lists"
        rows = f"{len(bad):,} row{'s' if len(bad) > 1 else ''}"
        raise DataError(f"Column {name!r} holds {what} instead of text in {rows} (first: data row {bad[0] + 1}, "
                        f"{str(value)[:60]}); set TEXT_COL to a column of text, or make those cells text (a record's "
                        "fields belong in columns of their own).")


def text_cells(column: pd.Series, name: str) -> pd.Series:
    """A column as strings, missing cells empty. A column of word lists (a tokenized parquet or JSON column) is
    joined with spaces, never turned into its repr (`"['orders' 'surged']"`); lists of other things and
    records are refused, naming what the column holds and the first row that holds it."""
    if column.dtype != object:
        return column.fillna("").astype(str)
    sample = next((v for v in column.head(1000) if not _is_missing(v)), None)
    if not isinstance(sample, (list, tuple, np.ndarray)):
        _refuse_containers(column, name)
        return column.fillna("").astype(str)

    def joined(value: Any) -> str:
        if _is_missing(value) or isinstance(value, str):
            return "" if _is_missing(value) else value
        items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        if all(isinstance(w, str) for w in items):
            return " ".join(items)
        kind = "records" if isinstance(value, dict) else type(next(w for w in items if not isinstance(w, str))).__name__
        row = next(i for i, v in enumerate(column) if v is value) + 1
        raise DataError(f"Column {name!r} holds lists of {kind} (e.g. data row {row}: {str(items)[:60]}), not text; "
                        "set TEXT_COL to a column of text, or of lists of words.")

    print(f"note: column {name!r} holds lists of words; each row's words joined with spaces into its text")
    return column.map(joined).astype(str)


def build_text(frame: pd.DataFrame, text_col: str, *, join: str = ". ", unescape: bool = False,
               chunk_rows: int = 100_000) -> pd.Series:
    """The text column, or several joined with `join` (empty parts skipped); optionally turn the
    literal `\\n` escapes of the original Yelp/Amazon CSVs into real newlines.

    Done in Arrow (pandas' `str` dtype, `pyarrow.compute`): millions of reviews are joined without a
    Python object per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = [pa.chunked_array(pa.array(text_cells(frame[c], c))) for c in text_columns(text_col)]
    chunks = []
    for start in range(0, len(frame), chunk_rows):  # bounded temporaries: a few copies of one chunk at most
        parts = [pc.utf8_trim_whitespace(col.slice(start, chunk_rows).combine_chunks()) for col in columns]
        text = parts[0]
        for part in parts[1:]:
            glued = pc.binary_join_element_wise(text, part, pa.scalar(join, type=text.type))
            text = pc.if_else(pc.equal(part, ""), text, pc.if_else(pc.equal(text, ""), part, glued))
        chunks.append(text)
    joined = pa.chunked_array(chunks, type=chunks[0].type) if chunks else pa.chunked_array([], type=pa.large_string())
    series = pd.Series(pd.arrays.ArrowStringArray(joined), index=frame.index)
    if unescape:
        series = series.str.replace("\\n", "\n", regex=False).str.replace('\\"', '"', regex=False).str.strip()
    return series


def id_string(value: Any) -> str:
    """Ids as strings; JSON numbers too (a column with a missing id is read as floats: 7.0 -> "7")."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


INVISIBLE_TEXT = r"^[\p{C}\p{Z}\p{M}\s]*$"  # no letter, number, punctuation or symbol: what the server refuses


def invisible(texts: pd.Series) -> pd.Series:
    """True for texts with nothing visible: empty, whitespace, or only zero-width, control or format characters
    (`\u200b`, `\ufeff`, a lone combining mark). Run in Arrow (RE2), not per Python object."""
    import pyarrow as pa
    import pyarrow.compute as pc

    flags = pc.match_substring_regex(pa.array(texts.astype(str).array), pattern=INVISIBLE_TEXT)
    return pd.Series(flags.to_numpy(zero_copy_only=False), index=texts.index, dtype=bool)


def text_keys(texts: pd.Series, chunk_rows: int = 200_000) -> tuple[pd.Series, pd.Series]:
    """(a 64-bit hash of each text with whitespace normalized, whether it is empty or invisible), in bounded
    chunks. Invisible texts (zero-width characters only) count as empty: a model reads nothing in them.

    Comparing hashes instead of normalized copies keeps duplicate detection at 8 bytes a row (a million
    reviews: 8 MB, not a second copy of every text); at 64 bits a collision among millions of rows is
    about as likely as one in a billion.
    """
    hashes = np.empty(len(texts), dtype=np.uint64)
    empty = np.empty(len(texts), dtype=bool)
    texts = texts.astype(str)  # Arrow-backed: the regex runs in Arrow (RE2), not per Python object
    for start in range(0, len(texts), chunk_rows):
        part = texts.iloc[start: start + chunk_rows].str.replace(r"\s+", " ", regex=True).str.strip()
        empty[start: start + len(part)] = invisible(part).to_numpy()
        hashes[start: start + len(part)] = pd.util.hash_pandas_object(part, index=False).to_numpy()
    return pd.Series(hashes, index=texts.index), pd.Series(empty, index=texts.index)


def combine_keys(a: pd.Series, b: pd.Series) -> pd.Series:
    """One key for a pair of text keys (order matters: (x, y) is not (y, x))."""
    with np.errstate(over="ignore"):
        return pd.Series(a.to_numpy() * np.uint64(0x9E3779B97F4A7C15) ^ b.to_numpy(), index=a.index)


def arrow_dataset(columns: dict[str, pd.Series]):
    """A `datasets.Dataset` of string columns built straight into Arrow, in chunks: no pandas round trip
    (`Dataset.from_pandas` of a million reviews peaks at several copies of the text)."""
    import hashlib

    import datasets
    import pyarrow as pa

    arrays = {}
    digest = hashlib.sha256()
    for name in list(columns):
        column = pa.chunked_array(columns.pop(name).astype(str).array.__arrow_array__())  # no copy
        digest.update(name.encode())
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(memoryview(buffer))
        arrays[name] = column
    # Given a fingerprint, datasets does not hash the table itself (which pickles every buffer: +2 copies).
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table(arrays)), fingerprint=digest.hexdigest()[:32])


# ----------------------------------------------------------------- label values as files write them

COMMON_LABELS = ["positive", "negative", "neutral", "pos", "neg", "true", "false", "yes", "no"]


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def normalize_label(value: Any) -> str:
    """A label as labels are compared: stripped, lower case, and numbers as numbers (`1`, `01`, `1.0` and `+1`
    are the label `1`; `0.50` is `0.5`): spreadsheets and float columns write one class several ways."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().lower()
    if _NUMBER.fullmatch(text):
        number = Decimal(text)
        return str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")
    return text


def normalized_labels(raw: pd.Series) -> pd.Series:
    """`normalize_label` of every row, computed once per distinct value (millions of rows, a few labels)."""
    try:
        lookup = {value: normalize_label(value) for value in pd.unique(raw)}
    except TypeError:  # unhashable cells (lists): row by row
        return raw.map(normalize_label).astype(object)
    return raw.map(lookup).astype(object)


def parse_label_names(value: str | list[str] | dict | None) -> tuple[list[str] | None, dict[str, str] | None]:
    """LABEL_NAMES as users write it -> (names in order, {raw value: name} or None).

    None: take the labels from the data. "negative,positive" (or a list): the names, in order;
    integer labels are positions in it. "1=World,2=Sports": explicit value -> name pairs.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = [s.strip() for s in (value.split(",") if isinstance(value, str) else map(str, value))]
        items = [s for s in items if s]
        if not any("=" in s for s in items):
            if len({normalize_label(s) for s in items}) != len(items):
                raise DataError(f"LABEL_NAMES {value!r} names a label twice; give each label once.")
            return items, None
        if not all("=" in s for s in items):
            raise DataError(f"LABEL_NAMES {value!r} mixes names and value=name pairs; use one form, e.g. "
                            "'negative,positive' or '0=negative,1=positive'.")
        pairs = [tuple(part.strip() for part in s.split("=", 1)) for s in items]
    names = list(dict.fromkeys(name for _, name in pairs))
    return names, {normalize_label(raw): name for raw, name in pairs}


INTEGER = r"-?\d+"


def _names_from_data(norm: pd.Series, raw: pd.Series) -> tuple[list[str], dict[str, str]]:
    """The data's own label set in a stable order (numbers numerically, names alphabetically); a name spelled
    as most of its rows spell it, a number as the number (`03` is `3`)."""
    spelled = raw.astype(str).str.strip().groupby(norm.to_numpy()).agg(lambda s: s.value_counts().index[0]).to_dict()
    keys = list(spelled)
    numeric = all(re.fullmatch(INTEGER, k) for k in keys)
    if numeric:
        spelled = {k: k for k in keys}
    keys.sort(key=(lambda k: int(k)) if numeric else (lambda k: (k, spelled[k])))
    return [spelled[k] for k in keys], spelled


def label_spellings(raw: pd.Series, norm: pd.Series) -> str:
    """' (one label written several ways, read as one: 01 = 1, ...)', or '' when each label has one spelling."""
    ways = raw.astype(str).str.strip().groupby(norm.to_numpy()).unique()
    several = [f"{' = '.join(sorted(map(str, v), key=lambda w: (w != k, w)))}" for k, v in ways.items() if len(v) > 1]
    if not several:
        return ""
    return f" (labels written several ways, each read as one label: {', '.join(several[:4])}" + (
        ", ..." if len(several) > 4 else "") + ")"


def _integer_rule(ints: pd.Series, names: list[str], label_col: str, where: str) -> int:
    """0 or 1: how integer labels index `names` (0-based Hub ids, or 1-based ids of the original CSVs)."""
    k = len(names)
    lo, hi = int(ints.min()), int(ints.max())
    zero, one = 0 <= lo and hi <= k - 1, 1 <= lo and hi <= k
    if zero and one:
        raise DataError(f"Integer labels in {label_col!r} of {where} ({lo}..{hi}) fit positions counted from 0 "
                        f"and from 1 in LABEL_NAMES ({k} names), so it is unclear whether they count from 0 or 1; "
                        f"say which with value=name pairs, e.g. LABEL_NAMES='{lo}={names[0]},{lo + 1}={names[1]},...'.")
    if not (zero or one):
        raise DataError(f"Integer labels in {label_col!r} of {where} run {lo}..{hi}, but LABEL_NAMES has {k} names "
                        f"({', '.join(names)}); set LABEL_NAMES to {hi - lo + 1} names, value=name pairs "
                        f"('{lo}=...,{hi}=...'), or None to use the numbers as labels.")
    return 0 if zero else 1


def _refuse_mixed(raw: pd.Series, numeric: pd.Series, label_col: str, where: str) -> None:
    if numeric.any() and not numeric.all():
        mixed = sorted(set(raw[numeric].astype(str)))[:3] + sorted(set(raw[~numeric].astype(str)))[:3]
        raise DataError(f"Label column {label_col!r} in {where} mixes numbers and names ({', '.join(mixed)}); "
                        "make the labels consistent, or set LABEL_NAMES with value=name pairs.")


def labels_from_data(raw: pd.Series, norm: pd.Series, label_col: str, where: str
                      ) -> tuple[pd.Series, list[str], str]:
    """LABEL_NAMES=None: the data's own labels, once checked that they are classes (not scores, text or ids)."""
    decimal = norm.str.fullmatch(r"-?\d*\.\d+")
    if decimal.mean() > 0.5:
        shown = ", ".join(sorted(set(raw[decimal].astype(str)))[:4])
        raise DataError(f"Labels in {label_col!r} of {where} are decimal numbers ({shown}, ...): a score to "
                        "regress, not classes; set LABEL_COL to a column of classes, or LABEL_NAMES with "
                        "value=name pairs to say which values are classes.")
    if len(norm) >= 50 and norm.nunique() > 0.5 * len(norm):
        raise DataError(f"Column {label_col!r} of {where} holds {norm.nunique():,} different values in "
                        f"{len(norm):,} rows: it looks like text or ids, not labels; set LABEL_COL to the "
                        "label column (or LABEL_NAMES to the labels).")
    _refuse_mixed(raw, norm.str.fullmatch(INTEGER), label_col, where)
    wanted, spelled = _names_from_data(norm, raw)
    return norm.map(spelled), wanted, f"labels taken from the data ({len(wanted)}): {', '.join(wanted)}"


def labels_by_names(raw: pd.Series, norm: pd.Series, wanted: list[str], pairs: dict[str, str] | None,
                     label_col: str, where: str) -> tuple[pd.Series, str]:
    """Labels read against LABEL_NAMES: value=name pairs, integer positions (0- or 1-based), or names."""
    by_key = {normalize_label(n): n for n in wanted}
    numeric = norm.str.fullmatch(INTEGER)
    named_by_numbers = any(re.fullmatch(INTEGER, k) for k in by_key)
    if pairs:
        names = norm.map(lambda v: pairs.get(v, v))
        rule = "labels mapped by LABEL_NAMES: " + ", ".join(f"{k} -> {v}" for k, v in list(pairs.items())[:8])
    elif numeric.all() and not named_by_numbers:
        ints = norm.astype(int)
        base = _integer_rule(ints, wanted, label_col, where)
        names = ints.map(lambda i: wanted[i - base])
        rule = (f"integer labels counted from {base} ({'0-based' if base == 0 else '1-based'}): "
                + ", ".join(f"{i + base} -> {n}" for i, n in enumerate(wanted)))
    else:
        if not named_by_numbers:
            _refuse_mixed(raw, numeric, label_col, where)
        names, rule = norm, f"labels matched by name: {', '.join(wanted)}"
    names = names.map(lambda v: by_key.get(normalize_label(v), v))
    unknown = Counter(v for v in names if v not in wanted)
    if unknown:
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in unknown.most_common(5))
        found = sorted(set(raw.astype(str).str.strip()))
        raise DataError(f"Labels in column {label_col!r} of {where} do not match LABEL_NAMES: found "
                        f"{{{', '.join(found[:8])}{', ...' if len(found) > 8 else ''}}}, LABEL_NAMES has "
                        f"{{{', '.join(wanted)}}} (unknown: {shown}); set LABEL_NAMES to your labels (or None to "
                        "take them from the data), or LABEL_COL to the label column.")
    absent = [n for n in wanted if n not in set(names)]
    return names, rule + (f" (no rows for {', '.join(absent)})" if absent else "")


# ------------------------------------------------------------------------------------------ folders

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


_NOT_DATA = ("readme", "license", "licence", "changelog", "classes", "citation")  # beside the data, not data


def data_files(folder: Path) -> list[Path]:
    """The data files under a folder: CSV, TSV, JSON (lines), parquet, .xlsx, .txt, .gz; not hidden files,
    `_SUCCESS` markers, caches, macOS `__MACOSX` forks, nor a README, LICENSE or classes.txt beside the data."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in _FILE_SUFFIXES | {".gz"}
            and not {".cache", "__MACOSX"} & set(p.parts) and not p.name.startswith((".", "_"))
            and not p.name.lower().startswith(_NOT_DATA)]


def split_files(folder: str | Path) -> dict[str, list[Path]]:
    """Data files of a dataset folder by split, from their names: `train.csv`, `validation.jsonl`,
    `data/test-00000-of-00001.parquet` (a Hub dataset downloaded with `hf download --repo-type dataset`)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or path.suffix.lower() not in _FILE_SUFFIXES | {".gz"} or ".cache" in path.parts:
            continue
        stem = path.name.lower()
        for split, names in SPLIT_NAMES.items():
            if any(re.match(rf"{name}([-_.]|$)", stem) for name in names):
                found.setdefault(split, []).append(path)
    return found


def saved_dataset_splits(folder: str | Path) -> dict[str, Any] | None:
    """{split: datasets.Dataset} of a folder written by `save_to_disk` (a `DatasetDict`, or one `Dataset`,
    which counts as the train split); None for any other folder."""
    folder = Path(folder)
    if not ((folder / "dataset_dict.json").is_file()
            or ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())):
        return None
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # noqa: BLE001 - a damaged or partial copy: say what it is and how to redo it
        raise DataError(f"{folder} is a `save_to_disk` folder that cannot be loaded ({err}); copy the whole folder "
                        "again, or save it again with `dataset.save_to_disk(...)`.") from err
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    found = {}
    for name, split in splits.items():
        standard = next((s for s, aliases in SPLIT_NAMES.items() if name.lower() in aliases), name)
        found.setdefault(standard, split)
    return found


_SPLIT_ORDER = ("train", "validation", "test")


def _splits_to_read(split: str, have: list[str], every: bool) -> list[str]:
    return [split] + ([s for s in _SPLIT_ORDER if s in have and s != split] if every else [])


def folder_splits(folder: str | Path, split: str = "train", *, every: bool = False, **read_options
                  ) -> dict[str, tuple[pd.DataFrame, DataSource]]:
    """{split: (table, source)} of a dataset folder: its `split` (refused, naming those it has, when missing) and,
    with `every`, its other train / validation / test splits. Layouts: a `save_to_disk` folder; text as class
    folders (`aclImdb/train/pos/*.txt`, see `class_folder_splits`); split files (`train.csv`, `dev.tsv`, a Hub
    download's `plain_text/train-00000-of-00004.parquet`); else one table (parts `part-0.parquet`, ... as Spark
    and pandas write them), which is whatever split is asked. `read_options` go to `read_table`. Says what it read."""
    folder = Path(folder)
    saved = saved_dataset_splits(folder)
    if saved is not None:
        if split not in saved:
            raise DataError(f"{folder} (saved with save_to_disk) has the splits {', '.join(saved)}, not {split!r}; "
                            "pick one of them (hub_split=...) or save that split.")
        out = {}
        for name in _splits_to_read(split, list(saved), every):
            print(f"note: {folder.name} is a saved dataset (save_to_disk); reading its {name} split "
                  f"({saved[name].num_rows:,} rows; splits: {', '.join(saved)})")
            frame = with_label_names(saved[name].to_pandas(), saved[name].features, f"{folder.name} ({name})")
            out[name] = frame, DataSource(requested=str(folder), used=str(folder), kind="folder")
        return out
    if class_folder_splits(folder) is not None:
        return read_class_splits(folder, split, every=every)
    by_split = split_files(folder)
    if not by_split:
        return _one_table(folder, split, every, read_options)
    if split not in by_split:
        raise DataError(f"{folder} has files for the splits {', '.join(by_split)}, not {split!r} (found "
                        f"{', '.join(p.name for ps in by_split.values() for p in ps[:2])}); point DATA_SOURCE at "
                        f"one file, or name the files {split}.csv / {split}-00000-of-00001.parquet.")
    return {name: _read_files(folder, by_split[name], name, read_options)
            for name in _splits_to_read(split, list(by_split), every)}


def _one_table(folder: Path, split: str, every: bool, read_options: dict[str, Any]
               ) -> dict[str, tuple[pd.DataFrame, DataSource]]:
    """A folder whose data files name no split: parts of one table, or one archive of a script dataset's repo."""
    data = data_files(folder)
    kinds = sorted({p.suffix.lower() for p in data})
    if not data:
        archives = [p for p in sorted(folder.rglob("*")) if ".cache" not in p.parts and is_archive(p)]
        if len(archives) == 1:  # a Hub repo of a script dataset keeps its data zipped beside the script
            print(f"note: {folder.name} holds no data file but the archive {archives[0].relative_to(folder)}; "
                  "reading that")
            return archive_splits(archives[0], split, every=every, **read_options)
        scripts = sorted(p.name for p in folder.glob("*.py"))
        hint = (f" Its loading script {scripts[0]} is not run (datasets 4 runs no scripts); export the data as "
                "files where it was made, or point DATA_SOURCE at them." if scripts else "")
        raise DataError(f"{folder} is a folder without data files (CSV, TSV, JSON lines, parquet, .xlsx, .txt"
                        f"{f'; archives: {len(archives)}' if archives else ''}); point DATA_SOURCE at a data "
                        f"file, or at a folder that holds them.{hint}")
    if len(kinds) > 1:
        raise DataError(f"{folder} holds data files of several kinds ({', '.join(kinds)}) and none is named after "
                        "a split (train, validation, test); point DATA_SOURCE at one file.")
    return {split: _read_files(folder, data, None, read_options)}


def _read_files(folder: Path, files: list[Path], split: str | None, read_options: dict[str, Any]
                ) -> tuple[pd.DataFrame, DataSource]:
    """The files of one split (or of one table, `split` None) as one table; their unreadable lines kept, named."""
    _one_configuration(folder, files)
    source = DataSource(requested=str(folder), used=str(folder), kind="folder",
                        parts=[str(p.relative_to(folder)) for p in files])
    frames = []
    for path in files:
        frame, used = read_table(path, **read_options)
        frames.append(frame)
        for reason, lines in used.skipped.items():  # unreadable lines stay reported, with their file
            source.skipped.setdefault(reason, []).extend(f"{path.name}: {line}" for line in lines)
        source.encoding, source.header = used.encoding, used.header
    names = [list(f.columns) for f in frames]
    if any(n != names[0] for n in names):
        odd = next(p for p, n in zip(files, names) if n != names[0])
        raise DataError(f"The files of {folder} do not share their columns: {files[0].name} has {names[0]}, "
                        f"{odd.name} has {list(frames[files.index(odd)].columns)}; make them alike or read one file.")
    shown = ", ".join(str(p.relative_to(folder)) for p in files[:3]) + (", ..." if len(files) > 3 else "")
    print(f"note: {folder.name} is a folder; reading {len(files)} file{'s' if len(files) > 1 else ''} as its "
          f"{split or 'one'} table: {shown}")
    return (frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)), source


def _one_configuration(folder: Path, files: list[Path]) -> None:
    """Refuse files of one split spread over sibling folders: a downloaded Hub dataset with several
    configurations (`glue/cola/train-*.parquet`, `glue/sst2/train-*.parquet`) would otherwise be mixed."""
    parents = sorted({p.parent for p in files})
    if len(parents) > 1:
        shown = ", ".join(str(p.relative_to(folder)) for p in parents[:6]) + (", ..." if len(parents) > 6 else "")
        raise DataError(f"{folder} holds the same split in {len(parents)} folders ({shown}): configurations of one "
                        f"dataset, not one table; point DATA_SOURCE at one of them, e.g. {parents[0]}.")


def read_folder(folder: str | Path, *, split: str = "train", **read_options) -> tuple[pd.DataFrame, DataSource]:
    """One split of a dataset folder as a table (see `folder_splits` for the layouts): `workbook predict --input`
    and the notebooks read folders through it."""
    return folder_splits(folder, split, **read_options)[split]


def unlabelled(frame: pd.DataFrame, label_col: str) -> str | None:
    """Why a given split cannot score a model (no label column, or only empty / -1 labels, as the Hub's GLUE
    test splits have), or None."""
    if label_col not in frame.columns:
        return f"has no {label_col!r} column"
    values = set(normalized_labels(frame[label_col].dropna()))
    return f"has no labels (every {label_col!r} is empty or -1)" if values <= {"", "-1", "nan"} else None


def split_origin(used: DataSource, split: str) -> str:
    """What a split was read from, for one-line notes: `train.tsv`, `aclImdb/test`, `the train split of X`."""
    name = used.used if used.kind == "hub" else Path(used.used).name
    if used.parts:
        return " + ".join(used.parts) if len(used.parts) <= 2 else f"{used.parts[0]} and {len(used.parts) - 1} more"
    return f"the {split} split of {name}"


def class_folder_columns(used: DataSource, text_col: str, label_col: str, pair_col: str | None
                          ) -> tuple[str, str, None]:
    """Class folders have their own columns (`text`: a file's text, `label`: its folder): the recipe's
    TEXT_COL / LABEL_COL (`title+content`) do not apply; said in one line when they differ."""
    if (text_col, label_col, pair_col) != ("text", "label", None):
        print(f"note: {Path(used.used).name} is text in class folders: each file's text is the text and its folder "
              f"the label (TEXT_COL={text_col!r}, LABEL_COL={label_col!r}"
              f"{f', TEXT_PAIR_COL={pair_col!r}' if pair_col else ''} do not apply)")
    return "text", "label", None


# ----------------------------------------------------------------------------------------- archives

def is_archive(path: Path) -> bool:
    """A tar archive (.tar, .tgz, .tar.gz, .tar.bz2, .tar.xz) or a zip of several files (not a .xlsx)."""
    import tarfile
    import zipfile

    if not path.is_file() or path.suffix.lower() in (".xlsx", ".xlsm"):
        return False
    try:
        if tarfile.is_tarfile(path):
            return True
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return len([m for m in archive.namelist() if not m.endswith("/") and "__MACOSX" not in m]) > 1
    except OSError:
        return False
    return False


@contextlib.contextmanager
def extracted(path: Path):
    """The archive unpacked into a temporary folder for the `with` block (tar members that would land
    outside it, links and devices are refused by the `data` filter; zip strips such paths)."""
    import tarfile
    import tempfile
    import zipfile

    print(f"note: {path.name} is an archive; unpacking it to a temporary folder (extract it once yourself to "
          "skip this on every run)")
    with tempfile.TemporaryDirectory(prefix="workbook-archive-") as tmp:
        target = Path(tmp) / (path.name.split(".")[0] or "archive")  # notes then name the archive, not tmp
        try:
            if tarfile.is_tarfile(path):
                with tarfile.open(path) as archive:
                    archive.extractall(target, filter="data")
            else:
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(target)
        except (OSError, tarfile.TarError, zipfile.BadZipFile) as err:
            raise DataError(f"Cannot unpack {path} ({err}); check the download, or extract it and set "
                            "DATA_SOURCE to the folder.") from err
        yield target


def archive_splits(path: Path, split: str = "train", *, every: bool = False, **read_options
                   ) -> dict[str, tuple[pd.DataFrame, DataSource]]:
    """The `split` table of a dataset archive (the original `amazon_review_polarity_csv.tgz`: train.csv and
    test.csv in a folder; `aclImdb_v1.tar.gz`; any layout `folder_splits` reads), with `every` its other splits
    too, or its one data file: {split: (table, source)}, unpacked once."""
    with extracted(path) as folder:
        layout = saved_dataset_splits(folder) is not None or class_folder_splits(folder) is not None
        data = [] if layout else data_files(folder)  # (aclImdb: 100,000 files not listed twice)
        if layout or split_files(folder) or all(p.name.lower().startswith("part-") for p in data):
            out = folder_splits(folder, split, every=every, **read_options)
        elif len(data) == 1:
            out = {split: read_table(data[0], **read_options)}
        else:
            names = ", ".join(str(p.relative_to(folder)) for p in data[:5]) + (", ..." if len(data) > 5 else "")
            raise DataError(f"{path.name} holds {len(data)} data files ({names}) and none is named after a split; "
                            "extract it and set DATA_SOURCE to the one you want.")
    for _, used in out.values():
        used.requested, used.used, used.kind = str(path), str(path), "archive"
    return out


def read_archive(path: Path, *, split: str = "train", **read_options) -> tuple[pd.DataFrame, DataSource]:
    """The `split` table of a dataset archive (see `archive_splits`)."""
    return archive_splits(path, split, **read_options)[split]


# ------------------------------------------------------------------------------------ class folders

TEXT_SUFFIXES = frozenset({"", ".txt", ".text"})  # 20 Newsgroups' files have no suffix at all


UNLABELLED = frozenset({"unsup", "unsupervised", "unlabeled", "unlabelled", "unlabel", "nolabel", "no_label",
                        "no-label"})


_SPLIT_WORDS = {"train": "train", "training": "train", "dev": "validation", "valid": "validation",
                "validation": "validation", "val": "validation", "test": "test", "testing": "test"}


_SPLIT_FOLDER = re.compile(r"(?:^|[-_. ])(" + "|".join(_SPLIT_WORDS) + r")(?:[-_. ]|$)")


_SPLIT_FILE = re.compile(r"(" + "|".join(_SPLIT_WORDS) + r")([-_.]|$)")


_NOT_EXAMPLES = ("readme", "license", "licence")


def _subfolders(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX")


def is_example_name(name: str) -> bool:
    """True for a file name that can hold one example: `.txt`, `.text` or no suffix; not hidden, not a README."""
    lowered = name.lower()
    return (not lowered.startswith((".", "_")) and os.path.splitext(lowered)[1] in TEXT_SUFFIXES
            and not lowered.startswith(_NOT_EXAMPLES))


def _holds_examples(folder: Path) -> bool:
    """True when a folder directly holds example files (not split tables such as `train.txt`), judged by the
    first one: cheap even for IMDB's 50,000-file folders."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and is_example_name(entry.name):
                return not _SPLIT_FILE.match(entry.name.lower())
    return False


def _labelled_classes(folder: Path) -> list[Path]:
    return [d for d in _subfolders(folder) if d.name.lower() not in UNLABELLED and _holds_examples(d)]


def _layout(folder: Path) -> tuple[Path, dict[str, list[Path]]] | None:
    """(the dataset's top folder, {split: [folders whose subfolders are its classes]}), or None."""
    for _ in range(3):  # the wrapper folders of an unpacked archive (aclImdb_v1/aclImdb/)
        inner = _subfolders(folder)
        with os.scandir(folder) as entries:
            files = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
        if len(inner) != 1 or files:
            break
        folder = inner[0]
    splits: dict[str, list[Path]] = {}
    for sub in _subfolders(folder):
        match = _SPLIT_FOLDER.search(sub.name.lower())
        if match and any(_holds_examples(d) for d in _subfolders(sub)):
            splits.setdefault(_SPLIT_WORDS[match.group(1)], []).append(sub)
    if any(len(_labelled_classes(root)) >= 2 for roots in splits.values() for root in roots):
        return folder, {s: splits[s] for s in ("train", "validation", "test") if s in splits}
    return (folder, {"train": [folder]}) if len(_labelled_classes(folder)) >= 2 else None


def class_folder_splits(folder: str | Path) -> dict[str, list[Path]] | None:
    """{split: [folders whose subfolders are its classes]} when `folder` is text data as class folders, else None.

    Split folders are named after a split (`train`, `test`, `dev`, `validation`, also `20news-bydate-train`);
    without them the folder itself is one table (the `train` split). At least two labelled class folders are
    needed: one class folder of text files is not this layout. Wrapper folders of an unpacked archive
    (`aclImdb_v1/aclImdb/`) are looked through."""
    found = _layout(Path(folder))
    return None if found is None else found[1]


def _read_bytes(path: str) -> bytes:
    """A file's bytes by plain system calls (open, read to the end, close): a third faster than `open().read()`
    for IMDB-sized files, which matters at 100,000 of them. The file is closed before the next one opens."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_text(path: str) -> str | None:
    """One example file's text, decoded as the other readers decode (UTF-16 with a BOM, UTF-8, else latin-1;
    newlines normalized); None for a binary file. Plain UTF-8 takes a fast path."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text or "\r" in text or text[:1] == "\ufeff":
        text = decode_bytes(raw)[0]
    return None if "\x00" in text else text


def _list_class(folder: Path) -> tuple[list[str], Counter]:
    """(example files under a class folder, in name order, as paths; the other files by suffix)."""
    examples, others = [], Counter()
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(files):
            if is_example_name(name):
                examples.append(os.path.join(here, name))
            else:
                others[os.path.splitext(name)[1].lower() or name] += 1
    return examples, others


def _beside(folder: Path, roots: list[Path] | None = None) -> list[str]:
    """Names of the files and folders beside the data in `folder` (a README, `imdb.vocab`, `urls_pos.txt`)."""
    keep = {r.name for r in roots or []}
    with os.scandir(folder) as entries:
        names = [e.name + ("/" if e.is_dir() else "") for e in entries
                 if not e.name.startswith(".") and e.name not in keep and not (roots is None and e.is_dir())]
    return sorted(names)


def _files(count: int) -> str:
    return f"{count:,} file{'s' if count != 1 else ''}"


def _shown(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _list_split(root: Path) -> tuple[list[str], list[str], Counter, list[str]]:
    """(example files, their labels, other files by suffix, what was left out) of one split's class folders."""
    files, labels, others, left = [], [], Counter(), []
    for folder in _subfolders(root):
        examples, extra = _list_class(folder)
        if folder.name.lower() in UNLABELLED:
            left.append(f"{folder.name}/ ({_files(len(examples) + sum(extra.values()))}, no label)")
            continue
        others.update(extra)
        if not examples:
            left.append(f"{folder.name}/ (no text files)")
        files.extend(examples)
        labels.extend([folder.name] * len(examples))
    return files, labels, others, left


def read_class_table(root: Path, split: str | None, where: str) -> tuple[pd.DataFrame, str]:
    """One split's class folders as a table (`text`, `label`, `file` relative to `root`) and the note saying
    what was read and what was left out (unlabelled folders, non-text and binary files, files beside).

    Files are read one after the other, each opened, read and closed: no file stays open. (Threads were
    measured slower: each small file is a few system calls, and the decoding holds the GIL.)"""
    files, labels, others, left = _list_split(root)
    texts = [_read_text(path) for path in files]
    if any(t is None for t in texts):
        others["binary files named like text"] += sum(t is None for t in texts)
        keep = [i for i, t in enumerate(texts) if t is not None]
        texts, labels, files = ([seq[i] for i in keep] for seq in (texts, labels, files))
    frame = pd.DataFrame({"text": pd.Series(texts, dtype="str"), "label": pd.Series(labels, dtype="str"),
                          "file": pd.Series([f[len(str(root)) + 1:] for f in files], dtype="str")})
    counts = sorted(Counter(labels).items())
    note = (f"note: {where} holds class folders: {len(frame):,} text files in {len(counts)} classes ("
            + ", ".join(f"{k} {v:,}" for k, v in counts[:8]) + (", ..." if len(counts) > 8 else "")
            + f") read as {f'its {split}' if split else 'one'} table, label = folder name")
    if others:
        left.append(f"{_files(sum(others.values()))} not text in the class folders ("
                    + ", ".join(f"{k} {v:,}" for k, v in others.most_common(4)) + ")")
    beside = [n for n in _beside(root) if not n.endswith("/")]
    if beside:
        left.append(f"{_files(len(beside))} beside the class folders ({_shown(beside)})")
    return frame, note + (f"; left out: {'; '.join(left)}" if left else "")


def read_class_splits(folder: str | Path, split: str = "train", *, every: bool = False
                      ) -> dict[str, tuple[pd.DataFrame, DataSource]]:
    """{split: (table, source)} of a class-folder dataset (see `class_folder_splits`): its `split` (refused,
    naming those it has, when missing) and, with `every`, its other splits. Says per split what was read and
    what was left out."""
    folder = Path(folder)
    found = _layout(folder)
    if found is None:
        raise DataError(f"{folder} is not text data as class folders (a folder per label holding .txt files); "
                        "point DATA_SOURCE at such a folder or at a data file.")
    top, layout = found
    if split not in layout:
        raise DataError(f"{folder} holds class folders for the splits {', '.join(layout)}, not {split!r}; pick one "
                        "of them, or point DATA_SOURCE at the class folders of that split.")
    roots = [r for rs in layout.values() for r in rs]
    if roots != [top]:  # split folders: say what lies beside them (a README, imdb.vocab)
        beside = _beside(top, roots)
        if beside:
            print(f"note: {folder.name}: left out {len(beside)} entries beside the split folders ({_shown(beside)})")
    out = {}
    for name in [split] + ([s for s in layout if s != split] if every else []):
        frames = []
        for root in layout[name]:
            where = f"{folder.name}/{root.relative_to(folder)}" if root != folder else folder.name
            frame, note = read_class_table(root, name if roots != [top] else None, where)
            print(note)
            frames.append(frame)
        table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        out[name] = table, DataSource(requested=str(folder), used=str(folder), kind="folder", encoding="per file",
                                      layout="class folders",
                                      parts=[f"{folder.name}/{r.relative_to(folder)}" if r != folder else folder.name
                                             for r in layout[name]])
    return out


# --------------------------------------------------------------- source -> target pairs as released

_XSUM_SECTION = re.compile(r"\[SN\]([A-Z-]+)\[SN\]")


def xsum_original_frames(folder: Path, source_col: str = "document", target_col: str = "summary"
                         ) -> dict[str, pd.DataFrame] | None:
    """XSum as first released (`bbc-summary-data/<id>.summary` files with `[SN]FIRST-SENTENCE[SN]` and
    `[SN]RESTBODY[SN]` sections; the split file `XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json` beside them):
    {split: frame with `source_col` (the body), `target_col` (the first sentence), id}; one `train` frame
    when there is no split file. None for a folder without `.summary` files."""
    files = sorted(folder.rglob("*.summary"))
    if not files:
        return None
    rows, unread = [], []
    for path in files:
        text = decode_bytes(path.read_bytes())[0]
        parts = _XSUM_SECTION.split(text)
        sections = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}
        if "FIRST-SENTENCE" not in sections or "RESTBODY" not in sections:
            unread.append(path.name)
            continue
        rows.append({source_col: sections["RESTBODY"], target_col: sections["FIRST-SENTENCE"], "id": path.stem})
    if not rows:
        raise DataError(f"{folder} holds {len(files)} .summary files but none has the [SN]FIRST-SENTENCE[SN] and "
                        "[SN]RESTBODY[SN] sections of XSum's release; point DATA_SOURCE at another file or folder.")
    frame = pd.DataFrame(rows)
    split_file = next((p for p in sorted(folder.rglob("*.json")) if "SPLIT" in p.name.upper()), None)
    note = f"note: {folder.name} holds XSum as released: {len(rows):,} .summary files"
    if unread:
        note += f" ({len(unread)} without the FIRST-SENTENCE / RESTBODY sections skipped: {', '.join(unread[:3])})"
    if split_file is None:
        print(note + "; no split file (XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json), so a seeded split")
        return {"train": frame}
    try:
        ids = json.loads(split_file.read_text())
        where = {str(i): split for split, names in SPLIT_NAMES.items() for key in ids if key.lower() in names
                 for i in ids[key]}
    except (ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{split_file} is not XSum's split file ({err}); remove it or fix it.") from err
    frame["split"] = frame["id"].map(where)
    frames = {split: part.drop(columns="split").reset_index(drop=True)
              for split, part in frame[frame["split"].notna()].groupby("split")}
    outside = int(frame["split"].isna().sum())
    print(note + f"; splits from {split_file.name}: " + ", ".join(f"{k} {len(v):,}" for k, v in frames.items())
          + (f" ({outside:,} articles in no split left out)" if outside else ""))
    if "train" not in frames:
        raise DataError(f"{split_file.name} puts none of the articles in {folder} in the train split; check that "
                        "the split file belongs to these files.")
    return frames


def line_pair_frames(folder: Path, source_col: str, target_col: str) -> dict[str, pd.DataFrame] | None:
    """`train.source` / `train.target`, `val.source` / `val.target`, ... (one example per line, the layout of
    fairseq and of transformers' seq2seq examples): {split: frame}. None for a folder without them."""
    sources = sorted(folder.rglob("*.source"))
    if not sources:
        return None
    frames = {}
    for path in sources:
        target = path.with_suffix(".target")
        if not target.is_file():
            raise DataError(f"{path} has no {target.name} beside it; each .source file needs its .target file "
                            "(one summary per line, in the same order).")
        split = next((s for s, names in SPLIT_NAMES.items() if path.stem.lower() in names), None)
        if split is None:
            raise DataError(f"{path.name}: the name is not a split (train, val / validation, test); rename it.")
        docs, sums = (decode_bytes(f.read_bytes())[0].splitlines() for f in (path, target))
        if len(docs) != len(sums):
            raise DataError(f"{path.name} has {len(docs):,} lines but {target.name} has {len(sums):,}; they must "
                            "pair line by line.")
        frames[split] = pd.DataFrame({source_col: docs, target_col: sums})
    print(f"note: {folder.name} holds .source / .target line files: "
          + ", ".join(f"{k} {len(v):,}" for k, v in frames.items()))
    return frames


def _pair_folder_frames(local: Path, source: str | None, source_col: str, target_col: str
                        ) -> tuple[dict[str, pd.DataFrame], DataSource]:
    """{split: raw frame} of a data folder (see `pair_frames`)."""
    original = (xsum_original_frames(local, source_col, target_col)
                or line_pair_frames(local, source_col, target_col))
    if original is not None:
        return original, DataSource(requested=source, used=str(local), kind="folder")
    saved = saved_dataset_splits(local)
    if saved is not None:
        if "train" not in saved:
            raise DataError(f"{local} (saved with save_to_disk) has no train split, only {', '.join(saved)}; "
                            "save the train split too, or point DATA_SOURCE at a data file.")
        print(f"note: {local.name} is a saved dataset (save_to_disk); using its splits "
              + ", ".join(f"{name} ({ds.num_rows:,} rows)" for name, ds in saved.items() if name in SPLIT_NAMES))
        return ({name: ds.to_pandas() for name, ds in saved.items() if name in SPLIT_NAMES},
                DataSource(requested=source, used=str(local), kind="folder"))
    files = split_files(local)
    if not files:  # parts of one table (part-0.parquet, ...): split it like a single file
        frame, used = read_folder(local)
        used.requested = source
        return {"train": frame}, used
    if "train" not in files:
        raise DataError(f"{local} is a folder without a train file (train.csv, train.jsonl, "
                        "data/train-*.parquet, ...); set DATA_SOURCE to a data file or such a folder.")
    for paths in files.values():
        _one_configuration(local, paths)
    frames = {split: pd.concat([read_table(f)[0] for f in paths], ignore_index=True)
              for split, paths in files.items()}
    return frames, DataSource(requested=source, used=str(local), kind="folder")


def pair_frames(source: str | None, *, sample: str | None, allow_standin: bool, hub_config: str | None,
                 hub_max_rows: int | None, seed: int, source_col: str = "document",
                 target_col: str = "summary") -> tuple[dict[str, pd.DataFrame], DataSource]:
    """{split: raw frame} from a folder of split files, a Hub dataset with splits, or one file / sample.
    Folders whose files name no columns (XSum's release, `.source` / `.target` line files) get the
    caller's `source_col` / `target_col`."""
    local = find_local_file(source) if source not in (None, "", "auto") else None
    if local is not None and local.is_dir():
        return _pair_folder_frames(local, source, source_col, target_col)
    if local is not None and is_archive(local):
        with extracted(local) as folder:
            frames, used = _pair_folder_frames(folder, source, source_col, target_col)
        used.used, used.kind = str(local), "archive"
        return frames, used
    if local is None and source not in (None, "", "auto") and not looks_like_file(source) and (
            hub.hub_available() or hub_dataset_cached(source)):
        import datasets

        try:
            names = datasets.get_dataset_split_names(source, hub_config)
        except Exception:  # noqa: BLE001 - no split listing: fall back to the train split alone
            names = ["train"]
        frames = {}
        for split, aliases in SPLIT_NAMES.items():
            name = next((n for n in names if n in aliases), None)
            if name is not None:
                cap = hub_max_rows if hub_max_rows is None or split == "train" else max(1, hub_max_rows // 8)
                frames[split] = load_hub_frame(source, name, hub_config, cap, seed)
        return frames, DataSource(requested=source, used=source, kind="hub")
    frame, used = locate_frame(source, sample=sample, allow_standin=allow_standin, hub_config=hub_config,
                               hub_max_rows=hub_max_rows, seed=seed)
    return {"train": frame}, used
