"""Token data for training: the embedded synthetic language, real text, long-context tasks.

- ``lib.data.tokens``: ``TokenData`` (a train/val token corpus with deterministic batching)
  and ``synthetic_corpus`` / ``SyntheticSource`` (a language with a closed-form entropy rate);
- ``lib.data.text``: ``load_corpus`` (a notebook's ``corpus`` parameter: ``"synthetic"``,
  ``"python-stdlib"``, a local path or ``"hf:owner/name"``), ``text_corpus`` (local files or a
  Hugging Face dataset as ``TokenData``), the byte and BPE tokenizers, ``read_documents``;
- ``lib.data.longctx``: the retrieval tasks (passkey, NIAH, MQAR, variable tracking), the
  ``TaskData`` adapter for ``lib.training`` and the answer-accuracy evaluations.
"""

from __future__ import annotations

from lib.data.longctx import (
    DIGITS,
    FILLERS,
    FIRST_SYMBOL,
    GENERATORS,
    IGNORE,
    TASKS,
    TaskBatch,
    TaskData,
    accuracy_vs_length,
    answer_accuracy,
    answer_scores,
    make_task,
    mqar,
    niah,
    niah_heatmap,
    passkey,
    variable_tracking,
)
from lib.data.text import (
    CORPORA,
    EOS_TOKEN,
    HUB_PREFIX,
    ROW_SUFFIXES,
    STDLIB_EXCLUDED,
    TEXT_SUFFIXES,
    BPETokenizer,
    ByteTokenizer,
    content_hash,
    load_corpus,
    python_stdlib_corpus,
    read_documents,
    stdlib_files,
    text_corpus,
    train_bpe,
)
from lib.data.tokens import (
    SPLITS,
    SyntheticSource,
    TokenData,
    synthetic_corpus,
)

__all__ = [
    "SPLITS",
    "TokenData",
    "SyntheticSource",
    "synthetic_corpus",
    "TEXT_SUFFIXES",
    "EOS_TOKEN",
    "ByteTokenizer",
    "BPETokenizer",
    "train_bpe",
    "read_documents",
    "text_corpus",
    "content_hash",
    "ROW_SUFFIXES",
    "HUB_PREFIX",
    "STDLIB_EXCLUDED",
    "CORPORA",
    "stdlib_files",
    "python_stdlib_corpus",
    "load_corpus",
    "DIGITS",
    "FIRST_SYMBOL",
    "IGNORE",
    "TASKS",
    "FILLERS",
    "TaskBatch",
    "passkey",
    "niah",
    "mqar",
    "variable_tracking",
    "GENERATORS",
    "make_task",
    "TaskData",
    "answer_accuracy",
    "answer_scores",
    "accuracy_vs_length",
    "niah_heatmap",
]
