"""lib.data.text: real text split by document, losslessly, cached; tokenizers; argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from lib.data import ByteTokenizer, read_documents, text_corpus

DOCS = [f"Story {i}: the {a} met a {b} near the {c}. They talked about {b}s and {c}s all day."
        for i, (a, b, c) in enumerate((a, b, c) for a in ("cat", "fox", "owl", "bee")
                                      for b in ("frog", "crow", "mole") for c in ("river", "hill", "barn"))]


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("\n\n".join(DOCS) + "\n")
    return path


def _decoded_documents(tokens, tokenizer) -> list[str]:
    ids = np.asarray(tokens)
    cuts = np.flatnonzero(ids == tokenizer.eos_id)
    return [tokenizer.decode(ids[a + 1:b]) for a, b in zip(np.concatenate([[-1], cuts[:-1]]), cuts)]


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_text_corpus_splits_by_document(text_file, tmp_path, tokenizer):
    data = text_corpus(text_file, tokenizer=tokenizer, vocab_size=300, val_fraction=0.25,
                       data_root=tmp_path / "root")
    assert isinstance(data.train, np.memmap) and data.entropy_rate is None
    train_docs = _decoded_documents(data.train, data.tokenizer)
    val_docs = _decoded_documents(data.val, data.tokenizer)
    assert len(val_docs) == 9 and len(train_docs) == 27
    assert sorted(train_docs + val_docs) == sorted(DOCS)           # lossless, every doc once
    assert not set(train_docs) & set(val_docs)
    if tokenizer == "bpe":
        assert data.vocab_size <= 300 and len(data.train) < 0.6 * sum(len(d) + 1 for d in train_docs)
        saved = list((tmp_path / "root" / "tokenizers").glob("*.json"))
        assert len(saved) == 1
        # the same tokenizer given by path reproduces the streams
        again = text_corpus(text_file, tokenizer=saved[0], val_fraction=0.25, data_root=tmp_path / "r2")
        assert np.array_equal(again.train, data.train)
    else:
        assert data.vocab_size == 256


def test_text_corpus_cache_and_seed(text_file, tmp_path):
    a = text_corpus(text_file, data_root=tmp_path)
    cached = next((tmp_path / "cache" / "text").glob("*/train.npy"))
    mtime = cached.stat().st_mtime_ns
    b = text_corpus(text_file, data_root=tmp_path)
    assert cached.stat().st_mtime_ns == mtime and np.array_equal(a.train, b.train)
    c = text_corpus(text_file, data_root=tmp_path, seed=1)
    assert sorted(_decoded_documents(c.val, ByteTokenizer())) != sorted(_decoded_documents(a.val, ByteTokenizer()))


def test_huggingface_loader_on_a_local_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(DOCS) + "\n")
    hf = text_corpus("text", data_root=tmp_path, dataset_kwargs={"data_files": str(path),
                                                               "cache_dir": str(tmp_path / "hf")})
    local = text_corpus(path, doc_separator="\n", data_root=tmp_path / "other")
    assert np.array_equal(hf.train, local.train) and np.array_equal(hf.val, local.val)
    assert read_documents("text", dataset_kwargs={"data_files": str(path), "cache_dir": str(tmp_path / "hf")},
                          max_documents=5) == DOCS[:5]


def test_text_corpus_rejects_bad_input(text_file, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        text_corpus(tmp_path / "nope.txt", data_root=tmp_path)
    with pytest.raises(ValueError, match="document"):
        text_corpus(text_file, doc_separator=None, data_root=tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        text_corpus(text_file, tokenizer="wordpiece", data_root=tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        text_corpus(text_file, val_fraction=1.0, data_root=tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        text_corpus(text_file, tokenizer="bpe", vocab_size=100, data_root=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer"):
        text_corpus(text_file, tokenizer=bad, data_root=tmp_path)
    with pytest.raises(ValueError, match="rows must be dicts"):
        read_documents(iter(["a story", "another"]))
    with pytest.raises(ValueError, match="not a column"):
        read_documents([{"body": "a story"}])
    assert read_documents([{"text": "a"}, {"text": " "}, {"text": "b"}]) == ["a", "b"]
    with pytest.raises(ValueError, match="do not exist"):
        text_corpus([text_file, tmp_path / "gone.txt"], data_root=tmp_path)
    small = text_corpus(text_file, data_root=tmp_path)
    with pytest.raises(ValueError, match="too few"):
        small.batch("val", 0, 2, seq_len=len(small.val))


@pytest.mark.parametrize("kwargs,match", [
    ({"val_fraction": True}, "val_fraction"),
    ({"val_fraction": "0.1"}, "val_fraction"),
    ({"val_fraction": 0}, "val_fraction"),
    ({"seed": True}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"seed": -1}, "seed"),
    ({"max_documents": 5.0}, "max_documents"),
    ({"tokenizer": "bpe", "vocab_size": 300.0}, "vocab_size"),
])
def test_text_corpus_refuses_bools_and_floats(text_file, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        text_corpus(text_file, data_root=tmp_path, **kwargs)


def test_text_corpus_takes_numpy_numbers(text_file, tmp_path):
    a = text_corpus(text_file, data_root=tmp_path, seed=2, val_fraction=0.25)
    b = text_corpus(text_file, data_root=tmp_path / "other", seed=np.int64(2), val_fraction=np.float32(0.25))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert read_documents(text_file, max_documents=np.int64(3)) == DOCS[:3]
