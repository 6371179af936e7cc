"""Shared machinery of the XTREME problems (``pawsx``, ``udpos``): multilingual BERT, tokenised
features, their on-disk cache, and the multi-input problem base.

The RLW paper (Lin et al., TMLR 2022, Sec. 5 and App. B) treats each language of an XTREME task
(Hu et al., ICML 2020) as one task: every language has its own batches (multi-input), all languages
share one ``bert-base-multilingual-cased`` encoder, and each language has its own linear head.

* **Transformers is optional** (``pip install 'mtl-litmus[nlp]'``) and imported only inside functions,
  so the rest of the package never pays for it; without it the problems fail at spec load with a
  one-line :class:`~study.errors.LitmusError` saying how to install it.
* **Weights and tokenizer** come from ``model``: a local folder (anything written by
  ``save_pretrained``) or a Hugging Face Hub name looked up in the local Hugging Face cache
  (``$HF_HOME/hub``, ``$HF_HUB_CACHE``). ``local_files_only`` defaults to ``True``: cluster workers
  often have no internet, and forty trials downloading 700 MB each at once is not what anyone wants.
  Download once where there is internet (``hf download bert-base-multilingual-cased``) into a cache
  the workers share, or set ``local_files_only: false`` to let transformers download on demand.
* **Features are cached** under ``cache_dir`` (default ``$XDG_CACHE_HOME/mtl-litmus/xtreme``, i.e.
  ``~/.cache/mtl-litmus/xtreme``) in files keyed by the SHA-256 of the data files' bytes, the
  tokenizer (its full serialisation, or its vocabulary and special tokens), ``max_length``, the label
  set and the transformers/tokenizers versions, so a second trial on the same node does not
  tokenise again and any change to one of those makes a new entry. Writes go to a temporary file
  renamed into place, so concurrent trials never read half a file.
* **Batches** are sliced from in-memory tensors (no per-sample Python work) and trimmed to the
  longest sequence of the batch; attention masks make that exact (padding never reaches a real
  position), and it saves most of the work on short PAWS-X pairs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from study.errors import DataError, LitmusError
from study.problems.base import Metric, Problem

log = logging.getLogger(__name__)

#: label of positions that carry no target (padding, special tokens, non-first word pieces)
IGNORE = -100
#: bump when the feature layout changes: old cache entries are then simply not found
FEATURE_FORMAT = "mtl-litmus-xtreme-features/1"
SPLIT_FILES = {"train": "train", "val": "dev", "test": "test"}
_LANG = re.compile(r"^[a-z]{2,3}$")


# -- optional dependency --------------------------------------------------------------------------
def has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def require_transformers(problem: str):
    """Import transformers or raise the one-line install hint."""
    if not has_transformers():
        raise LitmusError(f"problem {problem} needs the nlp extra: pip install 'mtl-litmus[nlp]'")
    import transformers

    return transformers


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - a source checkout without metadata
        return "unknown"


# -- model location ---------------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def _missing_model_message(problem: str, model: str) -> str:
    return (
        f"problem {problem}: model {model!r} is not in the local Hugging Face cache ({hf_cache_dir()}); "
        f"download it once where there is internet with `hf download {model}` (older hubs: "
        f"`huggingface-cli download {model}`) into a cache the workers share (HF_HOME), or set problem.model to a folder holding config.json, the weights and the "
        f"tokenizer files (save_pretrained), or set problem.local_files_only: false to download on demand"
    )


def resolve_model(problem: str, model: str, local_files_only: bool) -> str:
    """Return what to pass to ``from_pretrained``; raise DataError when it cannot be found.

    A local folder must hold ``config.json``. A Hub name must be in the local cache unless
    ``local_files_only`` is false (then transformers downloads it and reports its own errors).
    """
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise DataError(f"problem {problem}: model folder {path!r} has no config.json; save a model there "
                            f"with save_pretrained (weights, config and tokenizer), or name a Hub model")
        return path
    if _looks_like_path(model):
        raise DataError(f"problem {problem}: model folder {path!r} does not exist; point problem.model at a "
                        f"folder written by save_pretrained, or at a Hub name such as bert-base-multilingual-cased")
    if local_files_only:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            return model
        try:
            found = try_to_load_from_cache(model, "config.json")
        except Exception:  # an id the Hub would reject (HFValidationError): not in any cache either
            found = None
        if not isinstance(found, str):
            raise DataError(_missing_model_message(problem, model))
    return model


def load_tokenizer(problem: str, model: str, local_files_only: bool):
    transformers = require_transformers(problem)
    source = resolve_model(problem, model, local_files_only)
    try:
        return transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        if local_files_only and not os.path.isdir(source):
            raise DataError(_missing_model_message(problem, model)) from None
        raise DataError(f"problem {problem}: cannot load the tokenizer of {model!r}: {exc}") from None


def load_config(problem: str, model: str, local_files_only: bool):
    transformers = require_transformers(problem)
    source = resolve_model(problem, model, local_files_only)
    try:
        return transformers.AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise DataError(f"problem {problem}: cannot load the config of {model!r}: {exc}") from None


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides how the tokenizer splits text.

    Fast tokenizers serialise completely (normaliser, pre-tokeniser, model, special tokens); other
    tokenizers are identified by class, vocabulary and special tokens.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def file_digest(paths: Sequence[str | os.PathLike]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(str(p)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mtl-litmus", "xtreme")


# -- features -----------------------------------------------------------------------------------------
class Features(Dataset):
    """Tokenised examples of one language and split, held as tensors.

    ``input_ids`` (N, L) int32, ``token_type_ids`` (N, L) int8, ``lengths`` (N,) int32 (real tokens
    per row; the attention mask is ``arange(L) < length``), ``labels`` (N,) int64 for sequence
    classification or (N, L) int16 for tagging, with :data:`IGNORE` where there is no target.
    """

    def __init__(self, input_ids: Tensor, token_type_ids: Tensor, lengths: Tensor, labels: Tensor):
        n = int(input_ids.shape[0])
        if not (token_type_ids.shape == input_ids.shape and lengths.shape == (n,) and labels.shape[0] == n):
            raise ValueError("feature tensors disagree in shape")
        self.input_ids = input_ids
        self.token_type_ids = token_type_ids
        self.lengths = lengths
        self.labels = labels

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "lengths": self.lengths, "labels": self.labels}

    def batch(self, idx: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Rows ``idx`` as model inputs (int64, trimmed to the longest row) and targets."""
        lengths = self.lengths[idx].long()
        width = max(int(lengths.max()), 1) if len(idx) else 1
        x = {
            "input_ids": self.input_ids[idx, :width].long(),
            "attention_mask": (torch.arange(width) < lengths[:, None]).long(),
            "token_type_ids": self.token_type_ids[idx, :width].long(),
        }
        y = self.labels[idx]
        y = y[:, :width].long() if y.dim() == 2 else y.long()
        return x, y

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([i]))
        return {k: v[0] for k, v in x.items()}, y[0]


def pack(rows: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None, labels: Any,
         pad_id: int) -> Features:
    """Pad token rows to a common width and build :class:`Features`. ``labels`` is an (N,) array or a
    list of per-row label lists (padded with :data:`IGNORE`)."""
    n = len(rows)
    width = max((len(r) for r in rows), default=1)
    ids = np.full((n, width), pad_id, dtype=np.int32)
    tt = np.zeros((n, width), dtype=np.int8)
    lengths = np.zeros(n, dtype=np.int32)
    tagging = not isinstance(labels, np.ndarray)
    lab = np.full((n, width), IGNORE, dtype=np.int16) if tagging else labels.astype(np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        lengths[i] = len(r)
        if types is not None:
            tt[i, :len(r)] = types[i]
        if tagging:
            lab[i, :len(labels[i])] = labels[i]
    return Features(torch.from_numpy(ids), torch.from_numpy(tt), torch.from_numpy(lengths), torch.from_numpy(lab))


class FeatureCache:
    """Tokenised features on disk, one file per (kind, language, split, key)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(str(root)))

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def path(self, kind: str, lang: str, split: str, key: str) -> Path:
        return self.root / f"{kind}-{lang}-{split}-{key[:24]}.pt"

    def get(self, path: Path) -> Features | None:
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return Features(**data)
        except Exception as exc:  # a truncated or foreign file: tokenise again and overwrite it
            log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
            return None

    def put(self, path: Path, features: Features) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(features.tensors(), tmp)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache must not fail the trial
            log.warning("cannot write feature cache %s (%s)", path, exc)


# -- the encoder --------------------------------------------------------------------------------------
class TransformerEncoder(nn.Module):
    """A Hugging Face encoder (BERT: Devlin et al., NAACL 2019) mapping a batch dict to the pooled output
    (``[CLS]`` -> dense -> tanh, BERT's pooler) of shape (B, H) or to the last hidden states (B, L, H)."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        if output not in ("pooled", "tokens"):
            raise ValueError(f"output must be 'pooled' or 'tokens', got {output!r}")
        self.model = model
        self.output = output
        self.out_features = int(model.config.hidden_size)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        out = self.model(**kwargs)
        return out.pooler_output if self.output == "pooled" else out.last_hidden_state


def load_encoder(problem: str, model: str, local_files_only: bool, output: str) -> TransformerEncoder:
    transformers = require_transformers(problem)
    source = resolve_model(problem, model, local_files_only)
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover - older transformers
        pass
    try:
        net = transformers.AutoModel.from_pretrained(
            source, local_files_only=local_files_only, add_pooling_layer=(output == "pooled"))
    except (OSError, ValueError) as exc:
        if local_files_only and not os.path.isdir(source):
            raise DataError(_missing_model_message(problem, model)) from None
        raise DataError(f"problem {problem}: cannot load the weights of {model!r}: {exc}") from None
    return TransformerEncoder(net.float(), output)


# -- the problem base ---------------------------------------------------------------------------------
class XtremeProblem(Problem):
    """Base of the XTREME problems: one task per language, multi-input, a shared transformer encoder.

    Subclasses set ``kind``, ``encoder_output``, ``n_classes`` and implement ``data_files`` (the files
    of one split and language) and ``featurize`` (files -> :class:`Features`).
    """

    multi_input: ClassVar[bool] = True
    encoder_kind: ClassVar[str] = "transformer"
    resources: ClassVar[dict[str, float]] = {"cpu": 2, "gpu": 1}
    kind: ClassVar[str]
    encoder_output: ClassVar[str]
    n_classes: ClassVar[int]
    #: extra parts of the cache key (e.g. the label list)
    cache_salt: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: str = "data/xtreme", model: str = "bert-base-multilingual-cased",
                 languages: Sequence[str] | None = None, max_length: int = 128,
                 cache_dir: str | None = None, local_files_only: bool = True):
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"root must be a folder path, got {root!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a Hugging Face model name or a folder, got {model!r}")
        languages = tuple(type(self).tasks) if languages is None else languages
        if isinstance(languages, str) or not isinstance(languages, (list, tuple)) or not languages:
            raise ValueError(f"languages must be a non-empty list of language codes, got {languages!r}")
        for lang in languages:
            if not isinstance(lang, str) or not _LANG.match(lang):
                raise ValueError(f"languages must be ISO 639 codes such as 'en', got {lang!r}")
        if len(set(languages)) != len(languages):
            raise ValueError(f"languages must not repeat, got {list(languages)}")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 8 <= max_length <= 512:
            raise ValueError(f"max_length must be an integer in [8, 512], got {max_length!r}")
        if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
            raise ValueError(f"cache_dir must be a folder path or null, got {cache_dir!r}")
        if not isinstance(local_files_only, bool):
            raise ValueError(f"local_files_only must be true or false, got {local_files_only!r}")
        self.root = os.path.expanduser(str(root))
        self.model = model
        self.tasks = tuple(languages)
        self.max_length = max_length
        self.cache_dir = cache_dir or default_cache_dir()
        self.local_files_only = local_files_only

    # -- subclass hooks ------------------------------------------------------------------------------
    def data_files(self, split: str, lang: str) -> list[str]:
        """The files of one split ("train"/"val"/"test") and language; DataError when missing."""
        raise NotImplementedError

    def featurize(self, files: list[str], lang: str, split: str, tokenizer) -> Features:
        raise NotImplementedError

    # -- Problem -------------------------------------------------------------------------------------
    def check(self) -> None:
        require_transformers(self.name)
        if not os.path.isdir(self.root):
            raise DataError(f"problem {self.name}: data folder {self.root!r} does not exist; set problem.root "
                            f"to the folder holding the XTREME files (see the {self.name} module docs)")
        for split in SPLIT_FILES:
            for lang in self.tasks:
                self.data_files(split, lang)
        resolve_model(self.name, self.model, self.local_files_only)

    def load(self, seed: int) -> dict[str, dict[str, Features]]:
        files = {(s, t): self.data_files(s, t) for s in SPLIT_FILES for t in self.tasks}
        tokenizer = load_tokenizer(self.name, self.model, self.local_files_only)
        tok_key = tokenizer_fingerprint(tokenizer)
        cache = FeatureCache(self.cache_dir)
        out: dict[str, dict[str, Features]] = {s: {} for s in SPLIT_FILES}
        for (split, lang), paths in files.items():
            key = cache.key(format=FEATURE_FORMAT, kind=self.kind, data=file_digest(paths), tokenizer=tok_key,
                            max_length=self.max_length, salt=self.cache_salt,
                            versions=[_package_version("transformers"), _package_version("tokenizers")])
            path = cache.path(self.kind, lang, split, key)
            feats = cache.get(path)
            if feats is None:
                feats = self.featurize(paths, lang, split, tokenizer)
                cache.put(path, feats)
                log.info("%s %s/%s: tokenised %d examples, cached at %s", self.name, lang, split, len(feats), path)
            if len(feats) == 0:
                raise DataError(f"problem {self.name}: {', '.join(paths)} holds no examples")
            out[split][lang] = feats
        return out

    def batches(self, data: Any, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        if not isinstance(data, Features):
            yield from super().batches(data, batch_size, shuffle=shuffle, generator=generator)
            return
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield data.batch(order[start:start + batch_size])

    def build_encoder(self) -> nn.Module:
        return load_encoder(self.name, self.model, self.local_files_only, self.encoder_output)

    def encoder_out_features(self) -> int:
        if getattr(self, "_hidden_size", None) is None:
            self._hidden_size = int(load_config(self.name, self.model, self.local_files_only).hidden_size)
        return self._hidden_size

    def build_decoder(self, task: str) -> nn.Module:
        """Dropout(0.1) + Linear(hidden, classes), one per language (768 -> classes for mBERT)."""
        return nn.Sequential(nn.Dropout(p=0.1), nn.Linear(self.encoder_out_features(), self.n_classes))

    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        raise NotImplementedError


def resolve_first(candidates: Sequence[str | Callable[[], list[str]]]) -> list[str]:
    """The first candidate that exists: a path, or a callable returning a (possibly empty) file list."""
    for c in candidates:
        if callable(c):
            found = c()
            if found:
                return found
        elif os.path.isfile(c):
            return [c]
    return []
