"""Vectors instead of images: the rows of a table (``dataset=table``) and bag-of-words documents
(``dataset=text``), as float32 (N, D) splits of ``ImageData`` (``kind`` table or text).

Each loader fits its transform on the train split only (a table's scaler, one-hot categories and
fill values; a corpus's vocabulary and idf), as plain numbers and strings (``Fitted``), sealed by
a SHA-256 of its content. The checkpoint stores it and every command that opens the run passes
it back (``fitted=``), so the same rows become the same vectors; a transform whose content no
longer matches its seal is refused. Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aecli.data.sources import ImageData, labelled, split
from aecli.errors import ConfigError

TABLE_SUFFIXES = (".csv", ".tsv", ".npy", ".npz")


# --- the fitted transform: plain data, sealed ------------------------------------------------

def seal(transform: dict[str, Any]) -> dict[str, Any]:
    """``transform`` with ``sha256``: the digest of its content as canonical JSON."""
    body = {k: v for k, v in transform.items() if k != "sha256"}
    return {**body, "sha256": _digest(body)}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def unsealed(transform: Any, kind: str, source: str = "the checkpoint") -> dict[str, Any]:
    """A stored transform, checked: plain data of ``kind`` whose seal matches its content;
    anything else (edited, damaged, another dataset's) is a ``ConfigError``."""
    if not isinstance(transform, dict) or transform.get("kind") != kind or "sha256" not in transform:
        raise ConfigError("dataset", f"{source} holds no fitted {kind} transform",
                          "open a run trained on this dataset (its checkpoint stores the transform)")
    if _digest({k: v for k, v in transform.items() if k != "sha256"}) != transform["sha256"]:
        raise ConfigError("dataset", f"the fitted {kind} transform in {source} was changed after training "
                          "(its content does not match its SHA-256)",
                          "restore the run's original files, or train a new run")
    return transform


def transform_file(kind: str) -> str:
    """The run dir's JSON copy of a fitted transform: ``vocabulary.json`` (text), ``scaler.json`` (table)."""
    return "vocabulary.json" if kind == "text" else "scaler.json"


# --- tables ----------------------------------------------------------------------------------

def load_table(path: str, label_column: str | None = None, columns: list[str] | None = None,
               drop_columns: list[str] | None = None, categorical: list[str] | None = None,
               scale: str = "standard", missing: str = "refuse", val_fraction: float = 0.1,
               test_fraction: float = 0.2, split_seed: int = 0, fitted: dict[str, Any] | None = None) -> ImageData:
    """A CSV / TSV (pandas) or NumPy ``.npy`` / ``.npz`` table: one row per item. The columns
    named in ``categorical`` are one-hot coded; any other string column is refused.
    ``missing``: refuse (name the row and column), ``mean`` (fill with the train split's mean)
    or ``drop`` (leave those rows out). ``scale``: standard | minmax | none, fitted on the train
    split. ``fitted``: a stored transform to apply instead of fitting one."""
    scale, missing = getattr(scale, "value", scale), getattr(missing, "value", missing)  # config Enums
    frame = _read_table(Path(path).expanduser())
    labels_raw = None
    if label_column is not None:
        if label_column not in frame.columns:
            raise ConfigError("dataset.label_column", f"{path} has no column {label_column!r} "
                              f"(columns: {', '.join(map(str, frame.columns[:20]))})", "name one of its columns")
        labels_raw = frame[label_column].astype(str)
    wanted = [str(c) for c in (columns or frame.columns) if str(c) != label_column]
    wanted = [c for c in wanted if c not in set(drop_columns or [])]
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise ConfigError("dataset.columns", f"{path} has no column {absent[0]!r}", "name columns the file has")
    frame = frame[wanted]
    _check_text_columns(frame, categorical or [], path)
    if missing not in ("refuse", "mean", "drop"):
        raise ConfigError("dataset.missing", f"{missing!r} is not refuse, mean or drop", "use dataset.missing=mean")
    holes = frame.isna().to_numpy()
    if holes.any() and missing == "refuse":
        row, col = map(int, np.argwhere(holes)[0])
        raise ConfigError("dataset.missing", f"{path}: row {row + 1} has no value in column {wanted[col]!r} "
                          f"({int(holes.any(axis=1).sum())} rows have missing values)",
                          "fill them in, or pass dataset.missing=mean (the train mean) or dataset.missing=drop")
    if holes.any() and missing == "drop":
        keep = ~holes.any(axis=1)
        frame, labels_raw = frame[keep], labels_raw[keep] if labels_raw is not None else None
    parts = _split_rows(len(frame), val_fraction, test_fraction, split_seed)
    if fitted is None:
        fitted = _fit_table(frame.iloc[parts[0].numpy()], wanted, categorical or [], scale, path)
    fitted = unsealed(fitted, "table")
    matrix = torch.from_numpy(_apply_table(frame, fitted, path))
    extra = _labels(labels_raw.to_numpy() if labels_raw is not None else None, parts)
    train, val, test = (matrix[p] for p in parts)
    return ImageData(train, val, test, max_value=1.0, kind="table", transform=fitted,
                     features=list(fitted["features"]), **extra)


def _read_table(file: Path) -> Any:
    """The file as a pandas DataFrame (NumPy arrays: columns named c0, c1, ...)."""
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("dataset", "dataset=table needs pandas, which is not installed",
                          "pip install 'aecli[tables]' (or pip install pandas)") from None
    if not file.is_file():
        raise ConfigError("dataset.path", f"no file at {file}", "pass dataset.path=/path/to/table.csv")
    if file.suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError("dataset.path", f"{file.name}: not a {', '.join(TABLE_SUFFIXES)} file",
                          "pass a CSV, TSV or NumPy table")
    try:
        if file.suffix.lower() in (".npy", ".npz"):
            array = np.load(file, allow_pickle=False)
            array = array[array.files[0]] if hasattr(array, "files") else array
            array = np.asarray(array).reshape(len(array), -1)
            return pd.DataFrame(array, columns=[f"c{i}" for i in range(array.shape[1])])
        return pd.read_csv(file, sep="\t" if file.suffix.lower() == ".tsv" else ",")
    except (ValueError, OSError) as e:
        raise ConfigError("dataset.path", f"cannot read {file} ({str(e).splitlines()[0][:200]})",
                          "pass a well-formed table") from None


def _fit_table(train: Any, columns: list[str], categorical: list[str], scale: str, path: str) -> dict[str, Any]:
    """Categories, fill values and the scaler, from the train rows."""
    if scale not in ("standard", "minmax", "none"):
        raise ConfigError("dataset.scale", f"{scale!r} is not standard, minmax or none", "use dataset.scale=standard")
    unknown = [c for c in categorical if c not in columns]
    if unknown:
        raise ConfigError("dataset.categorical", f"{unknown[0]!r} is not a column of {path}", "name its columns")
    categories = {c: sorted(map(str, train[c].dropna().unique())) for c in categorical}
    numeric = [c for c in columns if c not in categories]
    fill = {c: float(train[c].mean()) for c in numeric}
    body: dict[str, Any] = {"kind": "table", "columns": columns, "categories": categories, "fill": fill,
                            "scale": scale, "shift": [], "divide": []}
    features = _feature_names(body)
    body["features"] = features
    x = _apply_table(train, seal(body | {"shift": [0.0] * len(features), "divide": [1.0] * len(features)}), path)
    if scale == "standard":
        shift, divide = x.mean(0), x.std(0)
    elif scale == "minmax":
        shift, divide = x.min(0), x.max(0) - x.min(0)
    else:
        shift, divide = np.zeros(x.shape[1]), np.ones(x.shape[1])
    divide = np.where(divide > 0, divide, 1.0)  # a constant column stays constant
    return seal(body | {"shift": [float(v) for v in shift], "divide": [float(v) for v in divide]})


def _check_text_columns(frame: Any, categorical: list[str], path: str) -> None:
    """Refuse a column of strings that is not to be one-hot coded, naming it."""
    from pandas.api.types import is_numeric_dtype

    for c in frame.columns:
        if c not in categorical and not is_numeric_dtype(frame[c].dtype):
            raise ConfigError("dataset.categorical", f"column {c!r} of {path} holds text "
                              f"({frame[c].dropna().iloc[0]!r}, ...)", f"one-hot code it with "
                              f"dataset.categorical=[{c}], or leave it out with dataset.drop_columns=[{c}]")


def _feature_names(body: dict[str, Any]) -> list[str]:
    """Feature names: a numeric column's own, ``column=value`` for each one-hot category."""
    return [name for c in body["columns"] for name in
            ([f"{c}={v}" for v in body["categories"][c]] if c in body["categories"] else [c])]


def _apply_table(frame: Any, fitted: dict[str, Any], path: str) -> np.ndarray:
    """The rows as float32 features: one-hot categories, filled numbers, scaled."""
    absent = [c for c in fitted["columns"] if c not in frame.columns]
    if absent:
        raise ConfigError("dataset.path", f"{path} lacks column {absent[0]!r}, which the run was trained on",
                          "pass the table the run was trained on (or one with the same columns)")
    blocks = []
    for c in fitted["columns"]:
        if c in fitted["categories"]:
            values = frame[c].astype(str).to_numpy()
            blocks.append(np.stack([values == v for v in fitted["categories"][c]], 1).astype(np.float64))
        else:
            try:
                column = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
            except (ValueError, TypeError):
                raise ConfigError("dataset.categorical", f"column {c!r} of {path} holds text",
                                  f"pass dataset.categorical=[{c}] or dataset.drop_columns=[{c}]") from None
            blocks.append(np.where(np.isnan(column), fitted["fill"][c], column)[:, None])
    x = np.concatenate(blocks, 1) if blocks else np.zeros((len(frame), 0))
    return ((x - np.asarray(fitted["shift"])) / np.asarray(fitted["divide"])).astype(np.float32)


def read_items(fitted: dict[str, Any], path: Path, text_column: str = "text") -> tuple[list[str], torch.Tensor]:
    """New items for a trained run, through its fitted transform: every row of a table file
    (named ``row N``), or every document of a corpus (a folder of .txt files, a CSV / JSONL);
    float32 (N, D). Problems name ``INPUT``."""
    try:
        if fitted["kind"] == "table":
            frame = _read_table(path)
            return [f"row {i + 1}" for i in range(len(frame))], torch.from_numpy(_apply_table(frame, fitted, str(path)))
        texts, names, _ = _read_documents(path, text_column, None)
        return names, torch.from_numpy(vectorize(fitted, texts))
    except ConfigError as e:
        raise ConfigError("INPUT", e.problem, e.fix) from None


def _split_rows(n: int, val_fraction: float, test_fraction: float, split_seed: int) -> list[torch.Tensor]:
    if n < 3:
        raise ConfigError("dataset.path", f"{n} rows are too few to split into train, val and test",
                          "use a table with more rows")
    return split(torch.arange(n), (val_fraction, test_fraction), split_seed)


def _labels(raw: np.ndarray | None, parts: list[torch.Tensor]) -> dict[str, Any]:
    """Per-split class ids from a label per row (classes: the sorted distinct labels)."""
    if raw is None:
        return {}
    classes = sorted(set(map(str, raw)))
    index = {c: k for k, c in enumerate(classes)}
    target = torch.tensor([index[str(v)] for v in raw], dtype=torch.int64)
    return {"labels": labelled([target[p] for p in parts]), "classes": classes}


# --- text ------------------------------------------------------------------------------------

def load_text(path: str, text_column: str = "text", label_column: str | None = None, vocab_size: int = 2000,
              representation: str = "counts", stop_words: bool = True, min_df: int = 2,
              val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
              fitted: dict[str, Any] | None = None) -> ImageData:
    """Documents as bag-of-words vectors over a vocabulary of the ``vocab_size`` most frequent
    words of the train split (scikit-learn's ``CountVectorizer``; English stop words left out
    when ``stop_words``; words in fewer than ``min_df`` train documents left out).
    ``representation``: binary | counts | tfidf (l2-normalised, idf from the train split).
    ``path``: a folder of ``.txt`` files (sub-folders: classes), or a CSV / JSONL file with a
    ``text_column`` and an optional ``label_column``."""
    representation = getattr(representation, "value", representation)  # a config Enum
    if representation not in ("binary", "counts", "tfidf"):
        raise ConfigError("dataset.representation", f"{representation!r} is not binary, counts or tfidf",
                          "use dataset.representation=counts")
    texts, names, labels_raw = _read_documents(Path(path).expanduser(), text_column, label_column)
    parts = _split_rows(len(texts), val_fraction, test_fraction, split_seed)
    if fitted is None:
        fitted = _fit_text([texts[i] for i in parts[0].tolist()], vocab_size, representation, stop_words, min_df)
    fitted = unsealed(fitted, "text")
    matrix = torch.from_numpy(vectorize(fitted, texts))
    train, val, test = (matrix[p] for p in parts)
    return ImageData(train, val, test, max_value=1.0, kind="text", transform=fitted,
                     features=list(fitted["vocabulary"]),
                     names={s: [names[i] for i in p.tolist()] for s, p in zip(("train", "val", "test"), parts)},
                     **_labels(labels_raw, parts))


def _read_documents(source: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[str], Any]:
    """Texts, a short name each (file name, or the first words), and labels (or None)."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.txt") if not any(part.startswith(".") for part in
                                                                    p.relative_to(source).parts))
        if not files:
            raise ConfigError("dataset.path", f"no .txt files under {source}", "pass a folder of .txt documents")
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
        classes = [f.relative_to(source).parts[0] if f.parent != source else None for f in files]
        labelled_ = all(c is not None for c in classes)
        return texts, [str(f.relative_to(source)) for f in files], np.array(classes) if labelled_ else None
    if not source.is_file():
        raise ConfigError("dataset.path", f"no file or folder at {source}",
                          "pass a folder of .txt files, or a CSV / JSONL file with a text column")
    frame = _read_frame(source)
    if text_column not in frame.columns:
        raise ConfigError("dataset.text_column", f"{source} has no column {text_column!r} "
                          f"(columns: {', '.join(map(str, frame.columns[:20]))})", "name its text column")
    if label_column is not None and label_column not in frame.columns:
        raise ConfigError("dataset.label_column", f"{source} has no column {label_column!r}", "name its label column")
    texts = frame[text_column].fillna("").astype(str).tolist()
    labels = frame[label_column].astype(str).to_numpy() if label_column else None
    return texts, [" ".join(t.split()[:8]) for t in texts], labels


def _read_frame(file: Path) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("dataset", "reading a CSV / JSONL corpus needs pandas, which is not installed",
                          "pip install 'aecli[tables]' (or pip install pandas), or use a folder of .txt "
                          "files") from None
    try:
        if file.suffix.lower() in (".jsonl", ".json"):
            return pd.read_json(file, lines=True)
        return pd.read_csv(file, sep="\t" if file.suffix.lower() == ".tsv" else ",")
    except (ValueError, OSError) as e:
        raise ConfigError("dataset.path", f"cannot read {file} ({str(e).splitlines()[0][:200]})",
                          "pass a CSV, TSV or JSONL file") from None


def _fit_text(train: list[str], vocab_size: int, representation: str, stop_words: bool, min_df: int) -> dict:
    """The vocabulary (and idf) of the train documents."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(max_features=vocab_size, stop_words="english" if stop_words else None,
                                 min_df=min(min_df, len(train)))
    try:
        counts = vectorizer.fit_transform(train)
    except ValueError as e:  # an empty vocabulary
        raise ConfigError("dataset.min_df", f"no vocabulary from the train documents ({e})",
                          "lower dataset.min_df, or pass dataset.stop_words=false") from None
    vocabulary = [str(w) for w in vectorizer.get_feature_names_out()]
    df = np.asarray((counts > 0).sum(0)).ravel()
    idf = np.log((1 + len(train)) / (1 + df)) + 1.0  # scikit-learn's smoothed idf
    return seal({"kind": "text", "representation": representation, "vocabulary": vocabulary,
                 "idf": [float(v) for v in idf]})


def vectorize(fitted: dict[str, Any], texts: list[str]) -> np.ndarray:
    """Documents as the fitted representation over the fitted vocabulary, float32 (N, D)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vocabulary = fitted["vocabulary"]
    counts = CountVectorizer(vocabulary={w: i for i, w in enumerate(vocabulary)}).transform(texts)
    x = np.asarray(counts.todense(), dtype=np.float32)
    if fitted["representation"] == "binary":
        return (x > 0).astype(np.float32)
    if fitted["representation"] == "tfidf":
        return l2_rows(x * np.asarray(fitted["idf"], dtype=np.float32))
    return x


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean length (empty rows stay zero)."""
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(1, keepdims=True))
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def tfidf(fitted: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """TF-IDF rows (l2-normalised, the fitted idf) of vectors in the fitted representation."""
    if fitted["representation"] == "tfidf":
        return x
    return l2_rows(x * np.asarray(fitted["idf"], dtype=np.float32))
