"""Token data: the embedded synthetic language, local text corpora and tokenizers, and the
long-context retrieval tasks.
"""

from __future__ import annotations

from lib.data.longctx import (
    DIGITS,
    FIRST_SYMBOL,
    GENERATORS,
    IGNORE,
    TASKS,
    TaskBatch,
    TaskData,
    accuracy_vs_length,
    answer_accuracy,
    make_task,
    mqar,
    niah,
    niah_heatmap,
    passkey,
    variable_tracking,
)
from lib.data.text import (
    EOS_TOKEN,
    TEXT_SUFFIXES,
    BPETokenizer,
    ByteTokenizer,
    content_hash,
    read_documents,
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
    "DIGITS",
    "FIRST_SYMBOL",
    "IGNORE",
    "TASKS",
    "TaskBatch",
    "passkey",
    "niah",
    "mqar",
    "variable_tracking",
    "GENERATORS",
    "make_task",
    "TaskData",
    "answer_accuracy",
    "accuracy_vs_length",
    "niah_heatmap",
]
