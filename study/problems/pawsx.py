"""``pawsx``: PAWS-X paraphrase identification (Yang et al., EMNLP 2019) as in XTREME, one task per language.

The RLW paper (Lin et al., TMLR 2022, Sec. 5, multilingual table) trains English, Chinese, German and
Spanish jointly: each language is a task with its own batches (multi-input), a shared
``bert-base-multilingual-cased`` encoder, and per language ``Dropout(0.1) + Linear(768, 2)`` on BERT's
pooled output. Training as in the paper: AdamW, lr 2e-5, eps 1e-8, batch 32 per language, gradient
clipping at norm 1.0, sequences truncated to 128 word pieces (longest-first over the pair).
Metric: accuracy per language (the analysis averages over languages).

Data (``root``): per split and language the first of these that exists **and is labelled** is read, so
XTREME's folder, the PAWS-X release (``x-final/``) or both merged into one folder all work:

* train, English: ``train-en.tsv`` (XTREME), ``en/train.tsv`` (release);
* train, other languages (the **machine-translated** English training set): ``train-{lang}.tsv`` (a
  folder that has one, e.g. LibMTL's), ``translated/en-{lang}-translated.tsv`` (XTREME's layout for its
  translate-train files), ``{lang}/translated_train.tsv`` (release). XTREME's own preprocessing
  (``utils_preprocess.py pawsx``) writes ``train-en.tsv`` only;
* val: ``dev-{lang}.tsv`` (XTREME), ``{lang}/dev_2k.tsv`` (release);
* test: ``test-{lang}.tsv`` when labelled, else ``{lang}/test_2k.tsv`` (release). XTREME's preprocessing
  drops the label of its test files (``sentence1<TAB>sentence2``, no header); such a file is skipped for
  the release's ``{lang}/test_2k.tsv``, and when that is missing the error says so in one line.

File formats (fields are split on tabs only, without quote processing, as XTREME's own reader does):

* XTREME's ``{train,dev}-{lang}.tsv``: ``sentence1<TAB>sentence2<TAB>label`` (label 0/1), written by
  ``csv.writer`` (CRLF line ends) without a header;
* the release: ``id<TAB>sentence1<TAB>sentence2<TAB>label`` with a header line;
* ``translated/en-{lang}-translated.tsv``: no header, tab-separated. **Assumption** (the files are not
  documented): rows are ``en_sentence1, en_sentence2, sentence1, sentence2, label`` (the translation in
  columns 3-4), which is how TensorFlow Datasets' ``xtreme_pawsx`` builder reads the published files,
  or the 3 columns ``sentence1, sentence2, label`` that XTREME's ``PawsxProcessor`` reads; both are
  accepted (the two sentences are the two fields before the label). As the TFDS builder does, rows of
  these machine-translated files that are malformed (wrong number of fields, label not 0/1) are
  skipped with a warning; if more than half of the rows are, the file is rejected.

A first line whose last field is not 0/1 is a header and skipped (so files with and without a header
both work, and no example is lost). ``train_files: {lang: path}`` overrides a language's training file
(relative to ``root`` or absolute), e.g. to train on other translations.

Splits: train / val (XTREME dev) / test, identical for every seed.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, ClassVar

import numpy as np
from torch import Tensor
from torch.nn import functional as F

from study.errors import DataError
from study.problems import PROBLEMS
from study.problems._xtreme import SPLIT_FILES, Features, XtremeProblem, pack
from study.problems.base import AccuracyMeter, Metric

PAWSX_LANGUAGES = ("en", "de", "es", "fr", "ja", "ko", "zh")
RELEASE_FILES = {"val": "dev_2k.tsv", "test": "test_2k.tsv"}
log = logging.getLogger(__name__)


_TRANSLATED = re.compile(r"^en-[a-z]{2,3}-translated\.tsv$")


def _is_translated(path: str) -> bool:
    return bool(_TRANSLATED.match(os.path.basename(path)))


#: the PAWS-X release's labelled file of each split (under ``x-final/{lang}/``)
_RELEASE_NAME = {"test": "test_2k.tsv", "val": "dev_2k.tsv", "train": "translated_train.tsv"}


def _release_name(split: str, lang: str) -> str:
    return "train.tsv" if split == "train" and lang == "en" else _RELEASE_NAME[split]


def unlabelled_message(path: str, split: str = "test", lang: str | None = None, release: str | None = None) -> str:
    """One line: ``path`` has no labels; name the labelled release file of ``split`` that replaces it."""
    code = lang or "{lang}"
    name = _release_name(split, code)
    where = release or os.path.join("ROOT", code, name)
    why = "XTREME's preprocessing drops the test labels" if split == "test" else "no label column"
    what = {"test": "test set", "val": "dev set", "train": "training set" if code == "en" else
            "machine-translated training set"}[split]
    return (f"problem pawsx: {path} is unlabelled (sentence1<TAB>sentence2 rows: {why}); put the PAWS-X "
            f"release's labelled {what} at {where} (x-final/{code}/{name}), it is then used automatically")


def is_unlabelled(path: str, lines: int = 20) -> bool:
    """Whether ``path`` looks like XTREME's label-free test file: among its first ``lines`` non-blank
    lines some have exactly two tab-separated fields and none is a labelled row."""
    two = False
    seen = 0
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) in (3, 4, 5) and fields[-1].strip() in ("0", "1"):
                return False
            two = two or len(fields) == 2
            seen += 1
            if seen >= lines:
                break
    return two


def read_pawsx(path: str, lenient: bool | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Sentence pairs and 0/1 labels of one PAWS-X file (3 columns, 4 with a leading id; a
    machine-translated ``en-{lang}-translated.tsv`` may have 5, see the module docs).

    ``lenient`` (default: only for ``en-{lang}-translated.tsv`` files) skips malformed rows instead of
    raising; a two-column row (XTREME's unlabelled test files) always raises a clear DataError.
    """
    lenient = _is_translated(path) if lenient is None else lenient
    widths = (3, 4, 5) if lenient else (3, 4)
    s1: list[str] = []
    s2: list[str] = []
    labels: list[int] = []
    skipped = 0
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            label = fields[-1].strip()
            if lineno == 1 and label not in ("0", "1") and len(fields) != 2:
                continue  # header
            if len(fields) == 2 and not lenient:
                if not labels:   # the file starts unlabelled: XTREME's test file, or one like it
                    raise DataError(unlabelled_message(path))
                raise DataError(f"problem pawsx: {path}:{lineno}: 2 fields (sentence1<TAB>sentence2), the label "
                                f"is missing; every row needs sentence1<TAB>sentence2<TAB>label (0/1)")
            if len(fields) not in widths or label not in ("0", "1"):
                if lenient:
                    skipped += 1
                    continue
                if len(fields) not in widths:
                    raise DataError(f"problem pawsx: {path}:{lineno}: expected sentence1<TAB>sentence2<TAB>label "
                                    f"(or id first), got {len(fields)} fields")
                raise DataError(f"problem pawsx: {path}:{lineno}: label must be 0 or 1, got {label!r}")
            s1.append(fields[-3])
            s2.append(fields[-2])
            labels.append(int(label))
    if skipped:
        if skipped > len(labels):
            raise DataError(f"problem pawsx: {path}: {skipped} of {skipped + len(labels)} rows are not "
                            f"[en_sentence1<TAB>en_sentence2<TAB>]sentence1<TAB>sentence2<TAB>label (label 0/1), "
                            f"so the file is rejected; replace it with a well-formed one, e.g. the PAWS-X release's "
                            f"x-final/{{lang}}/translated_train.tsv")
        log.warning("pawsx: %s: skipped %d malformed rows of %d", path, skipped, skipped + len(labels))
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

    def candidates(self, split: str, lang: str) -> list[str]:
        """The files tried for one split and language, in order (see the module docs)."""
        root = self.root
        if split == "train":
            if lang == "en":
                return [os.path.join(root, "train-en.tsv"), os.path.join(root, "en", "train.tsv")]
            return [os.path.join(root, f"train-{lang}.tsv"),
                    os.path.join(root, "translated", f"en-{lang}-translated.tsv"),
                    os.path.join(root, lang, "translated_train.tsv")]
        return [os.path.join(root, f"{SPLIT_FILES[split]}-{lang}.tsv"), os.path.join(root, lang, RELEASE_FILES[split])]

    def data_files(self, split: str, lang: str) -> list[str]:
        if split == "train" and lang in self.train_files:
            path = os.path.join(self.root, os.path.expanduser(self.train_files[lang]))
            if not os.path.isfile(path):
                raise DataError(f"problem pawsx: train_files.{lang} = {path!r} does not exist")
            if is_unlabelled(path):
                raise DataError(unlabelled_message(f"train_files.{lang} = {path}", "train", lang))
            return [path]
        candidates = self.candidates(split, lang)
        unlabelled = []
        for path in candidates:
            if not os.path.isfile(path):
                continue
            if is_unlabelled(path):
                unlabelled.append(path)
                continue
            return [path]
        if unlabelled:
            raise DataError(unlabelled_message(unlabelled[0], split, lang, candidates[-1]))
        raise DataError(f"problem pawsx: no {split} file for {lang!r}: looked for {', '.join(candidates)} (XTREME "
                        f"and PAWS-X release layouts); set problem.root to the folder holding them")

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
