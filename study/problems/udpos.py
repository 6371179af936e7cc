"""``udpos``: Universal Dependencies v2.5 part-of-speech tagging as in XTREME, one task per language.

The RLW paper (Lin et al., TMLR 2022, Sec. 5, multilingual table) trains English, Chinese, Telugu and
Vietnamese jointly: each language is a task with its own batches (multi-input), a shared
``bert-base-multilingual-cased`` encoder, and per language ``Dropout(0.1) + Linear(768, 17)`` on every
token's last hidden state. Only the first word piece of each word carries the word's tag; other
pieces, special tokens and padding are ignored (label -100) by the loss and the metrics. Training:
AdamW, lr 2e-5, eps 1e-8, batch 32 per language, gradient clipping at 1.0, 128 word pieces.

Tags: the 17 UPOS tags (:data:`UPOS`).

Metrics, per language, pooled over the split:

* ``f1`` - the span F1 XTREME reports for UD-POS: ``seqeval.metrics.f1_score`` (micro, default
  conlleval mode) on the per-word tag sequences, reimplemented in :func:`tag_spans` /
  :class:`TaggingMeter`. Exact definition: a tag ``t`` is read as prefix ``t[0]`` and type ``t[1:]``
  cut after its first ``-`` (``"_"`` when empty); spans open and close by the IOBES rules (prefixes
  ``B``/``I``/``E``/``S``/``O``) and whenever the type changes. For plain UPOS tags this means a run
  of equal tags is one span (``NOUN NOUN`` is one span) except tags starting with ``S`` (``SCONJ``,
  ``SYM``), which are single-word spans. A predicted span counts when the gold sequence has the same
  span (type, start, end); precision = correct / predicted spans, recall = correct / gold spans,
  ``f1 = 2PR / (P + R)`` (0 when there are none). As seqeval does with a list of sentences, a split's
  sequences are read as one stream with an ``O`` after each; since ``O`` and ``X`` both have the type
  ``"_"``, a run of ``X`` is closed only by a later tag of another type (an ``X`` run at the end of a
  sentence is never counted). We keep these quirks so the numbers are XTREME's.
* ``accuracy`` - the share of words whose tag is right. It equals micro span F1 if every word were its
  own span (UPOS has no ``O`` tag, so predicted spans = gold spans = words).

Data (``root``), either layout, per split and language, first match wins:

1. XTREME's ``udpos/{train,dev,test}-{lang}.tsv``: ``token<TAB>TAG`` lines, a blank line between
   sentences;
2. XTREME's ``udpos_processed_maxlen128/{lang}/{train,dev,test}.{model}`` (same format, over-long
   sentences already split for that model), with ``root`` pointing at ``udpos_processed_maxlen128``;
3. ``{train,dev,test}-{lang}.conllu``;
4. the UD v2.5 release tree: every ``**/{lang}_*-ud-{train,dev,test}.conllu`` below ``root``, i.e. all
   treebanks of the language merged, as XTREME does.

XTREME's test files carry no tags: its ``test-{lang}.tsv`` holds tokens only (one per line), and its
``udpos_processed_maxlen128`` preprocessing fills the missing tags with ``X``, so there every tag of
``test.{model}`` is ``X``. Such a file (tokens only, or every tag ``X``) is skipped for the next layout,
so UD's labelled CoNLL-U test files (3. or 4.) are used automatically when present under ``root``;
without them the error says so in one line. The readers reject such files with the same message.

CoNLL-U is read as UD's syntactic words: multiword-token ranges (``3-4``) and empty nodes (``5.1``) are
skipped, sentences whose text is withheld (every FORM ``_``) are dropped, and, as XTREME does, U+200C
and spaces inside a FORM are removed (Vietnamese words contain spaces). XTREME's own conversion keeps
fused forms instead of syntactic words, so CoNLL-U input can differ from XTREME's files on languages
with multiword tokens (none of zh/te/vi; a few English contractions).

Sequences longer than ``max_length`` word pieces are cut at word boundaries into several examples (as
XTREME's preprocessing does), so every word is trained on and scored; a word with no piece, or more
pieces than fit, becomes the unknown token.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor
from torch.nn import functional as F

from study.errors import DataError
from study.problems import PROBLEMS
from study.problems._xtreme import IGNORE, SPLIT_FILES, Features, XtremeProblem, pack, resolve_first
from study.problems.base import Metric

#: the 17 universal POS tags of UD v2
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X")
TAG_INDEX = {t: i for i, t in enumerate(UPOS)}

Sentence = tuple[list[str], list[str]]


# -- readers -----------------------------------------------------------------------------------------
def _tag(tag: str, path: str, lineno: int) -> str:
    if tag not in TAG_INDEX:
        raise DataError(f"problem udpos: {path}:{lineno}: {tag!r} is not a UPOS tag ({' '.join(UPOS)})")
    return tag


def unlabelled_message(path: str, why: str, root: str | None = None, lang: str | None = None) -> str:
    where = f" under {root}" if root else ""
    lang = lang or "{lang}"
    return (f"problem udpos: {path} {why}: XTREME's test files are unlabelled; put UD v2.5's labelled CoNLL-U "
            f"test files{where} (test-{lang}.conllu, or the release tree's {lang}_*-ud-test.conllu), they are "
            f"then used automatically")


TOKENS_ONLY = "holds tokens without tags"
ALL_X = "tags every word X (XTREME's preprocessing fills missing tags with X)"


def _split_pos_line(line: str) -> list[str]:
    parts = line.split("\t")
    if len(parts) != 2:
        parts = line.split()
    return parts


def tsv_labels(path: str) -> str:
    """``"labelled"``, ``"tokens"`` (tokens only), ``"all-x"`` (every tag X) or ``"empty"`` for one
    ``token<TAB>TAG`` file; stops reading at the first tagged word whose tag is not X."""
    tokens = tagged = 0
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = _split_pos_line(line)
            if len(parts) == 1 or ("\t" not in line and parts[-1] not in TAG_INDEX):
                tokens += 1   # a bare token (one with inner white space, e.g. U+00A0, is one too)
                continue
            if len(parts) != 2 or parts[1].strip() != "X":
                return "labelled"   # a real tag (or a malformed line, which the reader reports)
            tagged += 1
    if tagged:
        return "labelled" if tokens else "all-x"
    return "tokens" if tokens else "empty"


def read_xtreme_pos(path: str) -> list[Sentence]:
    """``token<TAB>TAG`` lines, blank line between sentences."""
    out: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    out.append((words, tags))
                    words, tags = [], []
                continue
            parts = _split_pos_line(line)
            if len(parts) == 1:
                if not out and not words:   # the file starts with bare tokens: XTREME's test file
                    raise DataError(unlabelled_message(path, TOKENS_ONLY))
                raise DataError(f"problem udpos: {path}:{lineno}: {line[:60]!r} has no tag; every word line is "
                                f"token<TAB>TAG")
            if len(parts) != 2:
                raise DataError(f"problem udpos: {path}:{lineno}: expected token<TAB>TAG, got {line[:60]!r}")
            words.append(parts[0].strip())
            tags.append(_tag(parts[1].strip(), path, lineno))
    if words:
        out.append((words, tags))
    return out


def read_conllu(path: str) -> list[Sentence]:
    """Syntactic words (FORM, UPOS) of a CoNLL-U file; see the module docs for the exact rules."""
    out: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def flush():
        nonlocal words, tags
        if words and not all(w == "_" for w in words):
            out.append(([w.replace("\u200c", "").replace(" ", "") for w in words], tags))
        words, tags = [], []

    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"problem udpos: {path}:{lineno}: a CoNLL-U word line has 10 tab-separated "
                                f"columns, got {len(cols)}")
            if "-" in cols[0] or "." in cols[0]:
                continue  # multiword-token range or empty node
            words.append(cols[1])
            tags.append(_tag(cols[3], path, lineno))
    flush()
    return out


def read_pos_files(paths: Sequence[str]) -> list[Sentence]:
    """Sentences of every file; a file whose every tag is X (XTREME's unlabelled test files) is refused."""
    out: list[Sentence] = []
    for p in paths:
        sents = read_conllu(p) if p.endswith((".conllu", ".conll")) else read_xtreme_pos(p)
        if sents and all(t == "X" for _, tags in sents for t in tags):
            raise DataError(unlabelled_message(p, ALL_X))
        out += sents
    return out


# -- features ----------------------------------------------------------------------------------------
def word_pieces(tokenizer, words: Sequence[str]) -> dict[str, list[int]]:
    """Word -> its piece ids, each word tokenised on its own (as XTREME does), in one batched call."""
    unique = sorted(set(words))
    ids = tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
    return dict(zip(unique, ids))


def tagging_features(sentences: Sequence[Sentence], tokenizer, max_length: int) -> Features:
    """Word-piece rows with the tag on each word's first piece, cut into rows of ``max_length``."""
    cls_id, sep_id, unk_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
    if cls_id is None or sep_id is None or unk_id is None:
        raise DataError("problem udpos: the tokenizer has no [CLS]/[SEP]/[UNK] tokens; use a BERT-style model")
    budget = max_length - 2
    pieces = word_pieces(tokenizer, [w for words, _ in sentences for w in words])
    rows: list[list[int]] = []
    labels: list[list[int]] = []

    def emit(ids: list[int], lab: list[int]):
        rows.append([cls_id, *ids, sep_id])
        labels.append([IGNORE, *lab, IGNORE])

    for words, tags in sentences:
        ids: list[int] = []
        lab: list[int] = []
        for word, tag in zip(words, tags):
            p = pieces[word]
            if not p or len(p) > budget:
                p = [unk_id]
            if len(ids) + len(p) > budget:
                emit(ids, lab)
                ids, lab = [], []
            ids += p
            lab += [TAG_INDEX[tag]] + [IGNORE] * (len(p) - 1)
        if ids:
            emit(ids, lab)
    return pack(rows, None, labels, tokenizer.pad_token_id or 0)


# -- metrics -----------------------------------------------------------------------------------------
def _prefix_type(tag: str) -> tuple[str, str]:
    return tag[:1], tag[1:].split("-", 1)[-1] or "_"


class SpanReader:
    """seqeval's span reading (``get_entities``, default mode), fed one tag at a time.

    A tag is prefix ``tag[0]`` and type ``tag[1:]`` after its first ``-`` (``"_"`` if empty). At
    position ``i`` the open span ends when the previous prefix is ``E``/``S``, or ``B``/``I`` followed by
    ``B``/``S``/``O``, or the previous prefix is not ``O``/``.`` and the type changes; a span starts at
    ``B``/``S``, at ``E``/``I`` after ``E``/``S``/``O``, or at a prefix other than ``O``/``.`` whose type
    differs from the previous one. ``spans`` collects ``(type, start, end)``, end inclusive.
    """

    def __init__(self) -> None:
        self.prev_tag, self.prev_type, self.begin, self.pos = "O", "", 0, 0
        self.spans: list[tuple[str, int, int]] = []

    def _ending(self, tag: str) -> tuple[str, int, int] | None:
        p, typ = _prefix_type(tag)
        prev = self.prev_tag
        if (prev in ("E", "S") or (prev in ("B", "I") and p in ("B", "S", "O"))
                or (prev not in ("O", ".") and self.prev_type != typ)):
            return (self.prev_type, self.begin, self.pos - 1)
        return None

    def push(self, tag: str) -> None:
        ended = self._ending(tag)
        if ended is not None:
            self.spans.append(ended)
        p, typ = _prefix_type(tag)
        if (p in ("B", "S") or (self.prev_tag in ("E", "S", "O") and p in ("E", "I"))
                or (p not in ("O", ".") and self.prev_type != typ)):
            self.begin = self.pos
        self.prev_tag, self.prev_type = p, typ
        self.pos += 1

    def extend(self, tags: Sequence[str]) -> None:
        for tag in tags:
            self.push(tag)

    def closed(self) -> list[tuple[str, int, int]]:
        """All spans, including the one a final ``O`` would close (without changing the reader)."""
        last = self._ending("O")
        return self.spans + ([last] if last is not None else [])


def tag_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Spans ``(type, start, end)`` of one tag sequence, as ``seqeval``'s ``get_entities`` reads it."""
    reader = SpanReader()
    reader.extend(tags)
    return reader.closed()


def span_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    """(correct, predicted, gold) span counts of one sequence."""
    g, p = set(tag_spans(gold)), set(tag_spans(pred))
    return len(g & p), len(p), len(g)


def f1_from_counts(correct: int, predicted: int, gold: int) -> float:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


class TaggingMeter:
    """Span F1 (seqeval micro, see the module docs) and word accuracy, pooled over a split.

    ``update(output (B, L, C) logits, target (B, L))``: positions whose target is -100 are not words
    and are skipped; each row is one sequence. As ``seqeval.metrics.f1_score`` does with a list of
    sentences, the split's sequences are read as one stream with an ``O`` after each sequence.
    """

    def __init__(self, tags: Sequence[str] = UPOS):
        self.tags = tuple(tags)
        self.gold_spans = SpanReader()
        self.pred_spans = SpanReader()
        self.words = self.right = 0

    def update(self, output: Tensor, target: Tensor) -> None:
        pred = output.argmax(dim=-1).cpu().numpy()
        gold = target.cpu().numpy()
        mask = gold != IGNORE
        self.words += int(mask.sum())
        self.right += int(((pred == gold) & mask).sum())
        for row_pred, row_gold, row_mask in zip(pred, gold, mask):
            self.gold_spans.extend([*(self.tags[i] for i in row_gold[row_mask]), "O"])
            self.pred_spans.extend([*(self.tags[i] for i in row_pred[row_mask]), "O"])

    def compute(self) -> dict[str, float]:
        if self.words == 0:
            raise ValueError("tagging metrics of an empty split are undefined")
        gold, pred = set(self.gold_spans.closed()), set(self.pred_spans.closed())
        return {"f1": f1_from_counts(len(gold & pred), len(pred), len(gold)), "accuracy": self.right / self.words}


# -- the problem -------------------------------------------------------------------------------------
@PROBLEMS.register("udpos")
class UDPOS(XtremeProblem):
    """UD v2.5 POS tagging, one task per language (en, zh, te, vi), mBERT, span F1 and accuracy.

    Universal Dependencies v2.5 (Zeman et al., 2019) as used by XTREME (Hu et al., ICML 2020); the
    multilingual multi-task setting of the RLW paper (Lin et al., TMLR 2022, Sec. 5): loss of language
    ``t`` is the token cross-entropy over first word pieces (label -100 elsewhere).
    """

    tasks = ("en", "zh", "te", "vi")
    kind: ClassVar[str] = "udpos"
    encoder_output: ClassVar[str] = "tokens"
    n_classes: ClassVar[int] = len(UPOS)
    cache_salt: ClassVar[dict[str, Any]] = {"tags": list(UPOS), "conllu": "syntactic-words/1"}
    defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw", "lr": 2e-5, "weight_decay": 0.0, "batch_size": 32, "epochs": 10,
        "grad_clip": 1.0,
    }

    def __init__(self, root: str = "data/udpos", model: str = "bert-base-multilingual-cased",
                 languages: list[str] | None = None, max_length: int = 128, cache_dir: str | None = None,
                 local_files_only: bool = True):
        super().__init__(root=root, model=model, languages=languages, max_length=max_length,
                         cache_dir=cache_dir, local_files_only=local_files_only)

    def data_files(self, split: str, lang: str) -> list[str]:
        name = SPLIT_FILES[split]
        tsv = os.path.join(self.root, f"{name}-{lang}.tsv")
        processed = os.path.join(self.root, lang, f"{name}.{os.path.basename(self.model.rstrip('/'))}")
        conllu = os.path.join(self.root, f"{name}-{lang}.conllu")
        pattern = os.path.join(self.root, "**", f"{lang}_*-ud-{name}.conllu")
        unlabelled: list[tuple[str, str]] = []
        for path in (tsv, processed):
            if os.path.isfile(path):
                state = tsv_labels(path)
                if state in ("tokens", "all-x"):
                    unlabelled.append((path, TOKENS_ONLY if state == "tokens" else ALL_X))
                    continue
                return [path]
        found = resolve_first([conllu, lambda: sorted(glob.glob(pattern, recursive=True))])
        if found:
            return found
        if unlabelled:
            path, why = unlabelled[0]
            raise DataError(unlabelled_message(path, why, self.root, lang))
        raise DataError(f"problem udpos: no {name} file for {lang!r} in {self.root}: looked for {name}-{lang}.tsv "
                        f"(XTREME), {name}-{lang}.conllu, and **/{lang}_*-ud-{name}.conllu (UD release)")

    def featurize(self, files: list[str], lang: str, split: str, tokenizer) -> Features:
        return tagging_features(read_pos_files(files), tokenizer, self.max_length)

    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {t: (Metric("f1", True), Metric("accuracy", True)) for t in self.tasks}

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), ignore_index=IGNORE)

    def new_meter(self, task: str) -> TaggingMeter:
        return TaggingMeter()


__all__ = ["UDPOS", "UPOS", "SpanReader", "TaggingMeter", "read_conllu", "read_xtreme_pos", "tag_spans", "tagging_features",
           "span_counts", "f1_from_counts", "read_pos_files", "tsv_labels"]
