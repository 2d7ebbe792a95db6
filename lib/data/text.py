"""Real text for the workbench: local files or a Hugging Face ``datasets`` dataset, tokenized
with bytes (vocab 256) or a ByteLevel BPE trained locally with ``tokenizers``, split into
train/validation by document, and cached as memory-mapped ``.npy`` token streams.

- ``read_documents``: the documents of files, a folder or a dataset;
- ``ByteTokenizer``, ``BPETokenizer`` and ``train_bpe``: the two tokenizers;
- ``text_corpus``: all of it, as the same ``TokenData`` (``lib.data.tokens``) the synthetic
  corpus is, so every notebook and ``lib.training`` take either;
- ``content_hash``: the cache keys;
- ``load_corpus``: the one entry point for a notebook's ``corpus`` parameter: ``"synthetic"``
  (known entropy rate), ``"python-stdlib"`` (``python_stdlib_corpus``: the interpreter's own
  standard library, no network), a local path, or an explicitly marked ``"hf:owner/name"``.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

from lib.core import Registry, check_int, check_number, check_seed, data_dir, keyed_rng
from lib.data.tokens import TokenData, synthetic_corpus

__all__ = ["TEXT_SUFFIXES", "ROW_SUFFIXES", "HUB_PREFIX", "EOS_TOKEN", "ByteTokenizer", "BPETokenizer",
           "train_bpe", "read_documents", "text_corpus", "content_hash", "STDLIB_EXCLUDED", "CORPORA",
           "stdlib_files", "python_stdlib_corpus", "load_corpus"]

TEXT_SUFFIXES = (".txt", ".md", ".text")
ROW_SUFFIXES = (".jsonl", ".parquet")   # one document per row (its text field)
HUB_PREFIX = "hf:"                      # marks a Hugging Face hub dataset; nothing else is fetched
EOS_TOKEN = "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256). Byte 0 (NUL) doubles as the document separator."""

    name = "byte"
    vocab_size = 256
    eos_id = 0

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` (ByteLevel BPE) with ``EOS_TOKEN`` as document separator."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception on bad files
            raise ValueError(f"tokenizer={str(path)!r} is not a tokenizers JSON file ({err})") from None
        self.eos_id = self.tokenizer.token_to_id(EOS_TOKEN)
        if self.eos_id is None:
            raise ValueError(f"tokenizer={str(path)!r} lacks the separator token {EOS_TOKEN!r}")
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.name = f"bpe-{hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]}"

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def train_bpe(documents: list[str], vocab_size: int, path: str | Path) -> BPETokenizer:
    """Train a ByteLevel BPE tokenizer on ``documents`` and save it as JSON at ``path``.

    ``vocab_size`` counts the 256 byte symbols and the separator, so it must be >= 257.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    vocab_size = check_int("vocab_size", vocab_size, 257)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tok.save(str(tmp))
    tmp.replace(path)   # atomic: a reader never sees half a file
    return BPETokenizer(path)


def read_documents(source, doc_separator: str | None = "\n\n", pattern: str = "*",
                   text_field: str = "text", split: str = "train", max_documents: int | None = None,
                   dataset_kwargs: dict | None = None, encoding: str = "utf-8") -> list[str]:
    """Documents (non-empty strings) from local files or a Hugging Face dataset.

    ``source``:

    - a local path: a text file (split into documents at ``doc_separator``; ``None``: one
      document per file), a ``.jsonl`` or ``.parquet`` file (each row's ``text_field`` is a
      document), or a folder (its files matching ``pattern`` with a suffix in
      ``TEXT_SUFFIXES`` or ``ROW_SUFFIXES``, recursively, sorted); a list of such files;
    - ``"hf:<name>"``, explicitly marked: ``datasets.load_dataset(<name>, split=split,
      **dataset_kwargs)`` (this may download; ``"hf:parquet"`` with
      ``dataset_kwargs={"data_files": ...}`` reads local files through the same code);
    - a ``datasets`` dataset or any iterable of dict rows.

    An unmarked string is always a local path: a missing one raises "no such file or folder"
    naming it, and is never sent to the hub. Text files are decoded with ``encoding``; bytes
    that do not decode raise a ``ValueError`` naming the file and the offset.
    """
    if max_documents is not None:
        max_documents = check_int("max_documents", max_documents, 1)
    if not isinstance(encoding, str) or not encoding:
        raise ValueError(f"encoding must be a codec name such as 'utf-8' or 'latin-1', got {encoding!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"encoding={encoding!r} is not a codec Python knows") from None
    files = None
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        name = source[len(HUB_PREFIX):]
        if not name:
            raise ValueError(f"source={source!r} names no dataset after {HUB_PREFIX!r} (e.g. 'hf:roneneldan/TinyStories')")
        import datasets

        rows = datasets.load_dataset(name, split=split, **(dataset_kwargs or {}))
    elif isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise ValueError(f"source={str(source)!r}: no such file or folder (a hub dataset is "
                             f"written {HUB_PREFIX}owner/name)")
        files = ([root] if root.is_file() else
                 sorted(p for p in root.rglob(pattern)
                        if p.is_file() and p.suffix in TEXT_SUFFIXES + ROW_SUFFIXES))
        if not files:
            raise ValueError(f"source={str(source)!r} holds no {TEXT_SUFFIXES + ROW_SUFFIXES} files "
                             f"matching {pattern!r}")
    elif isinstance(source, (list, tuple)) and all(isinstance(p, (str, Path)) for p in source):
        files = [Path(p) for p in source]
        missing = [str(p) for p in files if not p.is_file()]
        if missing or not files:
            raise ValueError(f"source lists files that do not exist: {missing or 'none given'}")
    else:
        rows = source
    docs: list[str] = []
    if files is not None:
        for path in files:
            if path.suffix in ROW_SUFFIXES:
                docs += _row_documents(_file_rows(path), text_field, max_documents, label=str(path))
            else:
                text = _read_text(path, encoding)
                parts = [text] if doc_separator is None else text.split(doc_separator)
                docs += [p.strip() for p in parts if p.strip()]
            if max_documents is not None and len(docs) >= max_documents:
                break
    else:
        docs = _row_documents(rows, text_field, max_documents, label="dataset")
    return docs[:max_documents] if max_documents is not None else docs


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not {encoding} text (byte {err.start}: {err.reason}); pass "
                         "encoding='latin-1' (or the file's codec) if it is text") from None


def _file_rows(path: Path):
    """Rows of a local ``.jsonl`` (one JSON object a line) or ``.parquet`` file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises its own ArrowInvalid on a bad file
            raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    rows = []
    for i, line in enumerate(_read_text(path, "utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not a JSON line ({err.msg})") from None
    return rows


def _row_documents(rows, text_field: str, max_documents: int | None, label: str) -> list[str]:
    docs = []
    for row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{label} rows must be dicts, got {type(row).__name__}; pass one split "
                             "(e.g. datasets.load_dataset(..., split='train'))")
        if text_field not in row:
            raise ValueError(f"text_field={text_field!r} is not a column of {label}; it has {list(row)}")
        if isinstance(row[text_field], str) and row[text_field].strip():
            docs.append(row[text_field])
        if max_documents is not None and len(docs) >= max_documents:
            break
    return docs


def text_corpus(source, tokenizer: str | Path = "byte", vocab_size: int = 4096,
                val_fraction: float = 0.05, seed: int = 0, data_root: str | Path | None = None,
                name: str | None = None, **read_kwargs) -> TokenData:
    """A ``TokenData`` from real text, split into train/validation BY DOCUMENT.

    ``tokenizer``: ``"byte"`` (vocab 256), ``"bpe"`` (ByteLevel BPE of ``vocab_size`` trained on
    the TRAINING documents only, saved atomically as
    ``<data_root>/tokenizers/<name>-<vocab_size>-<key>.json``, the key hashing the documents'
    content, the split and the tokenizers release) or the path of a tokenizers JSON file. ``val_fraction`` of the documents (at least one), chosen by a
    permutation seeded with ``seed``, form the validation split. Each document is followed
    by the tokenizer's separator id. Token streams are cached under
    ``<data_root>/cache/text/<key>/`` (key: content, tokenizer, split) and memory-mapped.
    ``data_root`` defaults to ``lib.core.data_dir()``. ``read_kwargs`` go to ``read_documents``.
    """
    val_fraction = check_number("val_fraction", val_fraction, 0, 1, strict_min=True, strict_max=True)
    seed = check_seed("seed", seed)
    root = Path(data_root) if data_root is not None else data_dir()
    docs = read_documents(source, **read_kwargs)
    if len(docs) < 2:
        raise ValueError(f"source yields {len(docs)} document(s); a train/validation split needs >= 2 "
                         "(set doc_separator to split a file into documents)")
    order = np.argsort(keyed_rng(seed, 3).random(len(docs)), kind="stable")
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    split_docs = {"val": [docs[i] for i in order[:n_val]], "train": [docs[i] for i in order[n_val:]]}
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode("utf-8", errors="replace") + b"\0")
    corpus_key = digest.hexdigest()[:16]
    if tokenizer == "byte":
        tok = ByteTokenizer()
    elif tokenizer == "bpe":
        vocab_size = check_int("vocab_size", vocab_size, 257)
        import tokenizers

        # A new tokenizers release may merge differently: it trains its own tokenizer.
        train_key = content_hash(corpus_key, seed, val_fraction, tokenizers.__version__)
        path = root / "tokenizers" / f"{name or 'bpe'}-{vocab_size}-{train_key}.json"
        tok = BPETokenizer(path) if path.exists() else train_bpe(split_docs["train"], vocab_size, path)
    elif isinstance(tokenizer, (str, Path)) and Path(tokenizer).is_file():
        tok = BPETokenizer(tokenizer)
    else:
        raise ValueError(f"tokenizer must be 'byte', 'bpe' or an existing tokenizer JSON path, got {tokenizer!r}")
    key = content_hash(corpus_key, tok.name, seed, val_fraction)
    cache = root / "cache" / "text" / f"{name or 'text'}-{key}"
    if not (cache / "meta.json").exists():
        streams = {}
        for split, texts in split_docs.items():
            encoded = tok.encode_batch(texts)
            sep = np.array([tok.eos_id])
            streams[split] = np.concatenate([np.concatenate([ids, sep]) for ids in encoded])
        meta = {"source": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                "tokenizer": tok.name, "n_documents": {s: len(t) for s, t in split_docs.items()},
                "val_fraction": val_fraction, "seed": seed}
        # Write beside the cache and rename: a crash or a concurrent writer never leaves half a cache.
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        TokenData(streams["train"], streams["val"], tok.vocab_size, None, name or "text", meta).save(tmp)
        try:
            tmp.rename(cache)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenData.load(cache, tokenizer=tok)


def content_hash(*parts: Any) -> str:
    """Short sha256 hex digest of JSON-able parts (cache keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- named corpora

# Folders of the standard library left out of "python-stdlib": test suites (which hold files
# that are deliberately not valid source), bundled third-party packages, GUI and demo code,
# and codec tables (generated hex maps that would dominate a BPE's merges).
STDLIB_EXCLUDED = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                   "lib2to3", "ensurepip", "idlelib", "tkinter", "turtledemo", "pydoc_data", "encodings")

CORPORA: Registry = Registry("corpus")


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The ``.py`` source files of the running interpreter's standard library, sorted.

    ``root`` defaults to ``sysconfig.get_paths()["stdlib"]`` (under ``sys.prefix`` when
    sysconfig names no folder); folders in ``STDLIB_EXCLUDED`` are left out.
    """
    root = _stdlib_root(root)
    if not root.is_dir():
        raise ValueError(f"root={str(root)!r}: no such folder (the standard library's source folder)")
    files = sorted(p for p in root.rglob("*.py")
                   if p.is_file() and not set(p.relative_to(root).parts[:-1]) & set(STDLIB_EXCLUDED))
    if not files:
        raise ValueError(f"root={str(root)!r} holds no standard-library .py files (is the source shipped?)")
    return files


def _stdlib_root(root) -> Path:
    if root is not None:
        return Path(root)
    return Path(sysconfig.get_paths().get("stdlib") or
                Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}")


@CORPORA.register("python-stdlib")
def python_stdlib_corpus(*, vocab_size: int = 4096, val_fraction: float = 0.05, seed: int = 0,
                         data_root: str | Path | None = None, root: str | Path | None = None) -> TokenData:
    """Real text that needs no network: the standard library's source (``stdlib_files``), one
    document per file, split into train/validation BY FILE (``text_corpus``'s seeded
    permutation), tokenised by a ByteLevel BPE of ``vocab_size`` trained locally on the
    training files and cached under ``data/`` (the cache keys hold the content hash, so the
    file list, the vocabulary size and the tokenizers release). Its entropy rate is unknown.

    The corpus is the running interpreter's: another Python version gives another corpus
    (``meta["python"]`` records which).
    """
    files = stdlib_files(root)
    data = text_corpus(files, tokenizer="bpe", vocab_size=vocab_size, val_fraction=val_fraction, seed=seed,
                       data_root=data_root, name="python-stdlib", doc_separator=None)
    base = _stdlib_root(root)
    data.meta.update(python=".".join(map(str, sys.version_info[:3])), n_files=len(files),
                     files_hash=content_hash([str(p.relative_to(base)) for p in files]))
    return data


@CORPORA.register("synthetic")
def _synthetic(*, vocab_size: int = 256, n_train_tokens: int = 2_000_000, n_val_tokens: int = 200_000,
               seed: int = 0, **source_kwargs) -> TokenData:
    """``lib.data.synthetic_corpus``: the embedded language with a known entropy rate."""
    return synthetic_corpus(n_train_tokens=n_train_tokens, n_val_tokens=n_val_tokens, vocab_size=vocab_size,
                            seed=seed, **source_kwargs)


def load_corpus(corpus: str | Path = "synthetic", *, seq_len: int | None = None,
                vocab_size: int | None = None, seed: int = 0, n_train_tokens: int | None = None,
                n_val_tokens: int | None = None, tokenizer: str | Path | None = None,
                encoding: str = "utf-8", val_fraction: float = 0.05, data_root: str | Path | None = None,
                text_field: str = "text", split: str = "train", dataset_kwargs: dict | None = None,
                **synthetic_kwargs) -> TokenData:
    """The one entry point for a notebook's ``corpus`` parameter; returns a ``TokenData``
    (``.train``, ``.val``, ``.vocab_size``, batching) whose ``.entropy_rate`` is the entropy
    floor in nats/token when it is known (``"synthetic"``) and ``None`` otherwise.

    ``corpus``:

    - ``"synthetic"`` (default): ``synthetic_corpus`` with ``vocab_size`` (default 256),
      ``n_train_tokens`` / ``n_val_tokens`` (default 2M / 200k), ``seed`` and any
      ``SyntheticSource`` keyword (``synthetic_kwargs``);
    - ``"python-stdlib"``: ``python_stdlib_corpus`` (BPE, ``vocab_size`` default 4096);
    - ``"hf:owner/name"``: a Hugging Face dataset through ``datasets.load_dataset`` (its
      ``split``, ``text_field``, ``dataset_kwargs``);
    - anything else is a local path: a text file, a folder, a ``.jsonl`` or ``.parquet`` file.

    Text corpora other than python-stdlib use bytes (vocab 256) unless ``vocab_size`` > 256
    asks for a locally trained BPE, or ``tokenizer`` gives one ("byte", "bpe" or a tokenizers
    JSON path). ``n_train_tokens`` / ``n_val_tokens`` cut a text corpus's streams to at most
    that many tokens. ``seq_len``, when given, must fit the validation split (at least one
    window of ``seq_len + 1`` tokens), checked here before any training.
    """
    if seq_len is not None:
        seq_len = check_int("seq_len", seq_len, 1)
    if isinstance(corpus, str) and corpus in CORPORA:
        if synthetic_kwargs and corpus != "synthetic":
            raise ValueError(f"corpus={corpus!r} takes no {sorted(synthetic_kwargs)} (synthetic-only arguments)")
        if corpus == "synthetic":
            if tokenizer is not None:
                raise ValueError("tokenizer applies to text corpora; the synthetic corpus is already tokens")
            kwargs = {k: v for k, v in (("vocab_size", vocab_size), ("n_train_tokens", n_train_tokens),
                                        ("n_val_tokens", n_val_tokens)) if v is not None}
            data = CORPORA.build("synthetic", seed=seed, **kwargs, **synthetic_kwargs)
        else:
            if tokenizer not in (None, "bpe"):
                raise ValueError(f"corpus='python-stdlib' is tokenised by its own BPE; got tokenizer={tokenizer!r}")
            data = CORPORA.build(corpus, vocab_size=4096 if vocab_size is None else vocab_size,
                                 val_fraction=val_fraction, seed=seed, data_root=data_root)
            data = _cut(data, n_train_tokens, n_val_tokens)
    elif synthetic_kwargs:
        raise ValueError(f"corpus={str(corpus)!r} takes no {sorted(synthetic_kwargs)} (synthetic-only arguments)")
    elif isinstance(corpus, (str, Path)):
        if isinstance(corpus, str) and not corpus.startswith(HUB_PREFIX) and not Path(corpus).exists():
            raise ValueError(f"corpus={corpus!r}: no such file or folder; the named corpora are "
                             f"{sorted(CORPORA)}, and a hub dataset is written {HUB_PREFIX}owner/name")
        if tokenizer is None:
            if vocab_size is not None and check_int("vocab_size", vocab_size, 256) > 256:
                tokenizer = "bpe"
            else:
                tokenizer = "byte"
        data = text_corpus(corpus, tokenizer=tokenizer, vocab_size=4096 if vocab_size is None else vocab_size,
                           val_fraction=val_fraction, seed=seed, data_root=data_root, encoding=encoding,
                           text_field=text_field, split=split, dataset_kwargs=dataset_kwargs)
        data = _cut(data, n_train_tokens, n_val_tokens)
    else:
        raise ValueError(f"corpus must be a corpus name {sorted(CORPORA)}, 'hf:owner/name' or a local path, "
                         f"got {type(corpus).__name__}")
    if seq_len is not None and len(data.val) < seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} validation tokens; corpus={str(corpus)!r} "
                         f"has {len(data.val)}")
    return data


def _cut(data: TokenData, n_train_tokens: int | None, n_val_tokens: int | None) -> TokenData:
    """``data`` with its streams cut to at most the given token counts (views, no copy)."""
    if n_train_tokens is None and n_val_tokens is None:
        return data
    n_train = len(data.train) if n_train_tokens is None else check_int("n_train_tokens", n_train_tokens, 2)
    n_val = len(data.val) if n_val_tokens is None else check_int("n_val_tokens", n_val_tokens, 2)
    return dataclasses.replace(data, train=data.train[:n_train], val=data.val[:n_val],
                               meta={**data.meta, "cut_to": {"train": n_train, "val": n_val}})
