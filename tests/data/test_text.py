"""lib.data.text: real text split by document, losslessly, cached; tokenizers; argument checks."""

from __future__ import annotations

import json
import re
import sys
import sysconfig

import numpy as np
import pytest

from lib.data import (
    ByteTokenizer,
    load_corpus,
    python_stdlib_corpus,
    read_documents,
    stdlib_files,
    synthetic_corpus,
    text_corpus,
)

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
    hf = text_corpus("hf:text", data_root=tmp_path, dataset_kwargs={"data_files": str(path),
                                                                  "cache_dir": str(tmp_path / "hf")})
    local = text_corpus(path, doc_separator="\n", data_root=tmp_path / "other")
    assert np.array_equal(hf.train, local.train) and np.array_equal(hf.val, local.val)
    assert read_documents("hf:text", dataset_kwargs={"data_files": str(path), "cache_dir": str(tmp_path / "hf")},
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


# ------------------------------------------------------------------ inputs as users pass them

def test_an_unmarked_string_is_a_path_never_a_hub_dataset(tmp_path, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError(f"datasets.load_dataset was called with {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for typo in ("corpus_typo", "roneneldan/TinyStories", str(tmp_path / "nope")):
        with pytest.raises(ValueError, match=rf"source='{re.escape(typo)}': no such file or folder"):
            text_corpus(typo, data_root=tmp_path)
        with pytest.raises(ValueError, match="no such file or folder.*python-stdlib"):
            load_corpus(typo, data_root=tmp_path)
    with pytest.raises(ValueError, match="names no dataset"):
        read_documents("hf:")


def test_non_utf8_text_names_the_file_and_encoding_reads_it(tmp_path):
    words = ["café crème", "naïve façade", "über straße"]
    path = tmp_path / "latin.txt"
    path.write_bytes("\n\n".join(words).encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not utf-8 text \(byte 3.*encoding="):
        text_corpus(path, data_root=tmp_path)
    assert read_documents(path, encoding="latin-1") == words
    data = text_corpus(path, encoding="latin-1", val_fraction=0.34, data_root=tmp_path)
    assert sorted(_decoded_documents(data.train, data.tokenizer) + _decoded_documents(data.val, data.tokenizer)) \
        == sorted(words)
    with pytest.raises(ValueError, match="encoding"):
        read_documents(path, encoding="klingon")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="blob.txt: not utf-8"):
        read_documents(binary)


def test_jsonl_and_parquet_files_and_folders_read_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    (tmp_path / "rows").mkdir()
    jsonl = tmp_path / "rows" / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows[:20]) + "\n")
    parquet = tmp_path / "rows" / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows[20:]), parquet)
    assert read_documents(jsonl) == DOCS[:20]
    assert read_documents(parquet) == DOCS[20:]
    assert read_documents(tmp_path / "rows") == DOCS        # sorted: a.jsonl, then b.parquet
    assert read_documents([parquet, jsonl], max_documents=18) == DOCS[20:] + DOCS[:2]
    with pytest.raises(ValueError, match="not a column"):
        read_documents(jsonl, text_field="body")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        read_documents(tmp_path / "bad.jsonl")


def test_hub_datasets_go_through_datasets_load_dataset(tmp_path, monkeypatch):
    """The real ``datasets`` code path, offline: ``hf:parquet`` on a local file, and a marked
    ``hf:owner/name`` that ``datasets`` resolves to a local folder of that name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "stories.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": d} for d in DOCS]), path)
    kwargs = {"data_files": str(path), "cache_dir": str(tmp_path / "hf")}
    hub = load_corpus("hf:parquet", dataset_kwargs=kwargs, data_root=tmp_path / "a")
    local = load_corpus(path, data_root=tmp_path / "b")
    assert np.array_equal(hub.train, local.train) and np.array_equal(hub.val, local.val)
    assert hub.entropy_rate is None and hub.vocab_size == 256
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone" / "stories").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"text": d} for d in DOCS]), tmp_path / "someone" / "stories" / "train.parquet")
    named = load_corpus("hf:someone/stories", dataset_kwargs={"cache_dir": str(tmp_path / "hf")},
                        data_root=tmp_path / "c")
    assert np.array_equal(named.train, local.train)


@pytest.fixture()
def fake_stdlib(tmp_path):
    """A standard library in miniature: modules, a package, and folders the corpus leaves out."""
    root = tmp_path / "python3.x"
    modules = {f"mod{i}.py": f"def f{i}(x):\n    return x * {i}  # module {i}\n" * (i + 3) for i in range(12)}
    modules["json/__init__.py"] = "from .decoder import JSONDecoder\n"
    modules["json/decoder.py"] = "class JSONDecoder:\n    pass\n"
    excluded = {"test/test_bad.py": "b'\\xff'\n", "site-packages/pkg.py": "x = 1\n",
                "encodings/cp1252.py": "table = 1\n", "idlelib/run.py": "y = 2\n"}
    for rel, text in {**modules, **excluded}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "notes.txt").write_text("not python\n")
    return root, modules


def test_stdlib_files_are_the_sources_outside_the_excluded_folders(fake_stdlib):
    root, modules = fake_stdlib
    assert [str(p.relative_to(root)) for p in stdlib_files(root)] == sorted(modules)
    real = stdlib_files()
    names = {p.name for p in real}
    assert {"os.py", "functools.py", "argparse.py"} <= names
    assert not any({"test", "site-packages", "encodings"} & set(p.parts) for p in real)
    assert all(p.is_relative_to(sysconfig.get_paths()["stdlib"]) for p in real)
    with pytest.raises(ValueError, match="no such folder"):
        stdlib_files(root / "missing")


def test_python_stdlib_splits_by_file_and_caches_its_bpe(fake_stdlib, tmp_path):
    root, modules = fake_stdlib
    data = python_stdlib_corpus(vocab_size=300, val_fraction=0.25, data_root=tmp_path / "d", root=root)
    files = {text.strip() for text in modules.values()}
    train = _decoded_documents(data.train, data.tokenizer)
    val = _decoded_documents(data.val, data.tokenizer)
    assert len(val) == 4 and len(train) == 10
    assert set(train) | set(val) == files and not set(train) & set(val)   # whole files, each once
    assert data.entropy_rate is None and data.vocab_size <= 300 and data.name == "python-stdlib"
    assert data.meta["n_files"] == 14 and data.meta["python"] == ".".join(map(str, sys.version_info[:3]))
    saved = list((tmp_path / "d" / "tokenizers").glob("python-stdlib-300-*.json"))
    assert len(saved) == 1
    mtime = saved[0].stat().st_mtime_ns
    again = python_stdlib_corpus(vocab_size=300, val_fraction=0.25, data_root=tmp_path / "d", root=root)
    assert saved[0].stat().st_mtime_ns == mtime and np.array_equal(again.val, data.val)
    python_stdlib_corpus(vocab_size=320, val_fraction=0.25, data_root=tmp_path / "d", root=root)
    assert len(list((tmp_path / "d" / "tokenizers").glob("python-stdlib-*.json"))) == 2
    (root / "mod99.py").write_text("print('a new file')\n" * 5)           # another file list
    python_stdlib_corpus(vocab_size=300, val_fraction=0.25, data_root=tmp_path / "d", root=root)
    assert len(list((tmp_path / "d" / "tokenizers").glob("python-stdlib-300-*.json"))) == 2


def test_bpe_cache_key_holds_the_tokenizers_release(text_file, tmp_path, monkeypatch):
    import tokenizers

    text_corpus(text_file, tokenizer="bpe", vocab_size=300, data_root=tmp_path)
    monkeypatch.setattr(tokenizers, "__version__", "0.0.1-test")
    text_corpus(text_file, tokenizer="bpe", vocab_size=300, data_root=tmp_path)
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 2


def test_load_corpus_gives_the_entropy_floor_when_known(text_file, tmp_path):
    synthetic = load_corpus("synthetic", vocab_size=64, n_train_tokens=5000, n_val_tokens=1000, seed=3)
    reference = synthetic_corpus(n_train_tokens=5000, n_val_tokens=1000, vocab_size=64, seed=3)
    assert synthetic.entropy_rate == reference.entropy_rate and synthetic.entropy_rate > 0
    assert np.array_equal(synthetic.train, reference.train)
    assert load_corpus().vocab_size == 256
    text = load_corpus(text_file, data_root=tmp_path)
    assert text.entropy_rate is None and text.vocab_size == 256
    bpe = load_corpus(str(text_file), vocab_size=300, data_root=tmp_path)
    assert 256 < bpe.vocab_size <= 300
    cut = load_corpus(text_file, n_train_tokens=100, n_val_tokens=50, data_root=tmp_path)
    assert len(cut.train) == 100 and len(cut.val) == 50 and np.array_equal(cut.train, text.train[:100])


@pytest.mark.parametrize("kwargs, match", [
    ({"corpus": "synthetic", "seq_len": 0}, "seq_len"),
    ({"corpus": "synthetic", "n_val_tokens": 100, "seq_len": 100}, r"seq_len=100 needs at least 101"),
    ({"corpus": "synthetic", "tokenizer": "bpe"}, "tokenizer"),
    ({"corpus": "python-stdlib", "tokenizer": "byte"}, "tokenizer"),
    ({"corpus": "python-stdlib", "n_topics": 3}, "n_topics"),
    ({"corpus": "text_file", "vocab_size": 100}, "vocab_size"),
    ({"corpus": "text_file", "branching": 4}, "branching"),
    ({"corpus": 3}, "corpus must be"),
    ({"corpus": "text_file", "n_train_tokens": 1}, "n_train_tokens"),
])
def test_load_corpus_rejects_bad_input(text_file, tmp_path, kwargs, match):
    if kwargs["corpus"] == "text_file":
        kwargs = {**kwargs, "corpus": text_file}
    with pytest.raises(ValueError, match=match):
        load_corpus(data_root=tmp_path, **kwargs)
