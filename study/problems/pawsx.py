"""``pawsx``: PAWS-X paraphrase identification (Yang et al., EMNLP 2019) as in XTREME, one task per language.

The RLW paper (Lin et al., TMLR 2022, Sec. 5, multilingual table) trains English, Chinese, German and
Spanish jointly: each language is a task with its own batches (multi-input), a shared
``bert-base-multilingual-cased`` encoder, and per language ``Dropout(0.1) + Linear(768, 2)`` on BERT's
pooled output. Training as in the paper: AdamW, lr 2e-5, eps 1e-8, batch 32 per language, gradient
clipping at norm 1.0, sequences truncated to 128 word pieces (longest-first over the pair).
Metric: accuracy per language (the analysis averages over languages).

Data (``root``), either layout:

* XTREME's processed files ``{train,dev,test}-{lang}.tsv``: ``sentence1<TAB>sentence2<TAB>label``
  (label 0/1), one header line. For every language except English, XTREME's ``train-{lang}.tsv`` is
  the **machine-translated** training set of the PAWS-X release (``{lang}/translated_train.tsv``);
  English trains on the original ``en/train.tsv``. ``dev`` is the 2k development set, ``test`` the 2k
  test set.
* The PAWS-X release itself (``x-final/``): ``{lang}/translated_train.tsv`` (``en/train.tsv`` for
  English), ``{lang}/dev_2k.tsv``, ``{lang}/test_2k.tsv`` with columns ``id, sentence1, sentence2, label``.

``train_files: {lang: path}`` overrides a language's training file (relative to ``root`` or absolute),
e.g. to train on other translations. A first line whose last field is not 0/1 is a header and skipped
(so files with and without a header both work, and no example is lost). Fields are split on tabs
only, without quote processing, as XTREME's own reader does.

Splits: train / val (XTREME dev) / test, identical for every seed.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
from torch import Tensor
from torch.nn import functional as F

from study.errors import DataError
from study.problems import PROBLEMS
from study.problems._xtreme import SPLIT_FILES, Features, XtremeProblem, pack, resolve_first
from study.problems.base import AccuracyMeter, Metric

PAWSX_LANGUAGES = ("en", "de", "es", "fr", "ja", "ko", "zh")
RELEASE_FILES = {"val": "dev_2k.tsv", "test": "test_2k.tsv"}


def read_pawsx(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """Sentence pairs and 0/1 labels of one PAWS-X file (3 columns, or 4 with a leading id)."""
    s1: list[str] = []
    s2: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            label = fields[-1].strip()
            if lineno == 1 and label not in ("0", "1"):
                continue  # header
            if len(fields) not in (3, 4):
                raise DataError(f"problem pawsx: {path}:{lineno}: expected sentence1<TAB>sentence2<TAB>label "
                                f"(or id first), got {len(fields)} fields")
            if label not in ("0", "1"):
                raise DataError(f"problem pawsx: {path}:{lineno}: label must be 0 or 1, got {label!r}")
            s1.append(fields[-3])
            s2.append(fields[-2])
            labels.append(int(label))
    return s1, s2, np.asarray(labels, dtype=np.int64)


@PROBLEMS.register("pawsx")
class PAWSX(XtremeProblem):
    """PAWS-X paraphrase identification, one task per language (en, zh, de, es), mBERT, accuracy.

    PAWS-X: Yang et al., EMNLP 2019; the multilingual multi-task setting of the RLW paper (Lin et al.,
    TMLR 2022, Sec. 5): loss of language ``t`` is the cross-entropy of ``Linear(Dropout(pooled))``.
    """

    tasks = ("en", "zh", "de", "es")
    kind: ClassVar[str] = "pawsx"
    encoder_output: ClassVar[str] = "pooled"
    n_classes: ClassVar[int] = 2
    defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw", "lr": 2e-5, "weight_decay": 0.0, "batch_size": 32, "epochs": 5,
        "grad_clip": 1.0,
    }

    def __init__(self, root: str = "data/pawsx", model: str = "bert-base-multilingual-cased",
                 languages: list[str] | None = None, max_length: int = 128,
                 train_files: dict[str, str] | None = None, cache_dir: str | None = None,
                 local_files_only: bool = True):
        super().__init__(root=root, model=model, languages=languages, max_length=max_length,
                         cache_dir=cache_dir, local_files_only=local_files_only)
        for lang in self.tasks:
            if lang not in PAWSX_LANGUAGES:
                raise ValueError(f"languages must be PAWS-X languages ({', '.join(PAWSX_LANGUAGES)}), got {lang!r}")
        train_files = dict(train_files or {})
        for lang, path in train_files.items():
            if lang not in self.tasks:
                raise ValueError(f"train_files has language {lang!r}, which is not in languages {list(self.tasks)}")
            if not isinstance(path, str) or not path:
                raise ValueError(f"train_files.{lang} must be a file path, got {path!r}")
        self.train_files = train_files

    def data_files(self, split: str, lang: str) -> list[str]:
        root = self.root
        if split == "train" and lang in self.train_files:
            path = os.path.join(root, os.path.expanduser(self.train_files[lang]))
            if not os.path.isfile(path):
                raise DataError(f"problem pawsx: train_files.{lang} = {path!r} does not exist")
            return [path]
        xtreme = os.path.join(root, f"{SPLIT_FILES[split]}-{lang}.tsv")
        if split == "train":
            release = os.path.join(root, lang, "train.tsv" if lang == "en" else "translated_train.tsv")
        else:
            release = os.path.join(root, lang, RELEASE_FILES[split])
        found = resolve_first([xtreme, release])
        if not found:
            raise DataError(f"problem pawsx: no {split} file for {lang!r}: looked for {xtreme} (XTREME layout) "
                            f"and {release} (PAWS-X release layout); set problem.root to the folder holding them")
        return found

    def featurize(self, files: list[str], lang: str, split: str, tokenizer) -> Features:
        first: list[str] = []
        second: list[str] = []
        labels = []
        for path in files:
            a, b, y = read_pawsx(path)
            first += a
            second += b
            labels.append(y)
        rows, types = [], []
        for start in range(0, len(first), 4096):
            enc = tokenizer(first[start:start + 4096], second[start:start + 4096], truncation=True,
                            max_length=self.max_length, return_token_type_ids=True)
            rows += enc["input_ids"]
            types += enc["token_type_ids"]
        return pack(rows, types, np.concatenate(labels) if labels else np.zeros(0, np.int64),
                    tokenizer.pad_token_id or 0)

    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {t: (Metric("accuracy", True),) for t in self.tasks}

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def new_meter(self, task: str) -> AccuracyMeter:
        return AccuracyMeter()
