"""Real text for the workbench: local files or a Hugging Face ``datasets`` dataset, tokenized
with bytes (vocab 256) or a ByteLevel BPE trained locally with ``tokenizers``, split into
train/validation by document, and cached as memory-mapped ``.npy`` token streams.

- ``read_documents``: the documents of files, a folder or a dataset;
- ``ByteTokenizer``, ``BPETokenizer`` and ``train_bpe``: the two tokenizers;
- ``text_corpus``: all of it, as the same ``TokenData`` (``lib.data.tokens``) the synthetic
  corpus is, so every notebook and ``lib.training`` take either;
- ``content_hash``: the cache keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lib.core import check_int, check_number, check_seed, data_dir, keyed_rng
from lib.data.tokens import TokenData

__all__ = ["TEXT_SUFFIXES", "EOS_TOKEN", "ByteTokenizer", "BPETokenizer", "train_bpe",
           "read_documents", "text_corpus", "content_hash"]

TEXT_SUFFIXES = (".txt", ".md", ".text")
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
                   dataset_kwargs: dict | None = None) -> list[str]:
    """Documents (non-empty strings) from local files or a Hugging Face dataset.

    ``source``: a text file, a folder (files matching ``pattern`` with a suffix in
    ``TEXT_SUFFIXES``, recursively, sorted), a list of files, a ``datasets`` dataset (or any
    iterable of dict rows), or a
    dataset name for ``datasets.load_dataset(source, split=split, **dataset_kwargs)`` (this
    may download; only used when asked for). A file splits into documents at
    ``doc_separator`` (``None``: one document per file); a dataset row's ``text_field`` is a
    document.
    """
    if max_documents is not None:
        max_documents = check_int("max_documents", max_documents, 1)
    if isinstance(source, (str, Path)) and Path(source).exists():
        root = Path(source)
        files = ([root] if root.is_file() else
                 sorted(p for p in root.rglob(pattern) if p.is_file() and p.suffix in TEXT_SUFFIXES))
        if not files:
            raise ValueError(f"source={str(source)!r} holds no {TEXT_SUFFIXES} files matching {pattern!r}")
    elif isinstance(source, (list, tuple)) and all(isinstance(p, (str, Path)) for p in source):
        files = [Path(p) for p in source]
        missing = [str(p) for p in files if not p.is_file()]
        if missing or not files:
            raise ValueError(f"source lists files that do not exist: {missing or 'none given'}")
    elif isinstance(source, (str, Path)) and (Path(source).suffix in TEXT_SUFFIXES or str(source).startswith((".", "/"))):
        raise ValueError(f"source={str(source)!r}: no such file or folder")
    else:
        files = None
    docs: list[str] = []
    if files is not None:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            parts = [text] if doc_separator is None else text.split(doc_separator)
            docs += [p.strip() for p in parts if p.strip()]
    else:
        dataset = source
        if isinstance(source, str):
            import datasets

            dataset = datasets.load_dataset(source, split=split, **(dataset_kwargs or {}))
        for row in dataset:
            if not isinstance(row, dict):
                raise ValueError(f"dataset rows must be dicts, got {type(row).__name__}; pass one split "
                                 "(e.g. datasets.load_dataset(..., split='train'))")
            if text_field not in row:
                raise ValueError(f"text_field={text_field!r} is not a column; the dataset has {list(row)}")
            if row[text_field] and row[text_field].strip():
                docs.append(row[text_field])
            if max_documents is not None and len(docs) >= max_documents:
                break
    return docs[:max_documents] if max_documents is not None else docs


def text_corpus(source, tokenizer: str | Path = "byte", vocab_size: int = 4096,
                val_fraction: float = 0.05, seed: int = 0, data_root: str | Path | None = None,
                name: str | None = None, **read_kwargs) -> TokenData:
    """A ``TokenData`` from real text, split into train/validation BY DOCUMENT.

    ``tokenizer``: ``"byte"`` (vocab 256), ``"bpe"`` (ByteLevel BPE of ``vocab_size`` trained on
    the TRAINING documents only, saved as ``<data_root>/tokenizers/<name>.json``) or the path of
    a tokenizers JSON file. ``val_fraction`` of the documents (at least one), chosen by a
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
        train_key = content_hash(corpus_key, seed, val_fraction)
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
