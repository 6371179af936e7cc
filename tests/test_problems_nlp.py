"""The XTREME problems (pawsx, udpos): readers, span F1, features, cache, and one epoch through the trial.

The model is a tiny BERT built here from a config and a WordPiece vocabulary this file writes; the data
are tiny files in the exact on-disk formats (XTREME TSV, PAWS-X release, CoNLL-U, UD release tree).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from study.errors import DataError, LitmusError, SpecError
from study.problems import PROBLEMS, _xtreme
from study.problems._xtreme import IGNORE, FeatureCache, Features, pack
from study.problems.pawsx import PAWSX, read_pawsx
from study.problems.udpos import (
    UDPOS,
    UPOS,
    TaggingMeter,
    f1_from_counts,
    read_conllu,
    read_xtreme_pos,
    span_counts,
    tag_spans,
    tagging_features,
)
from study.registry import instantiate

# -- span F1 ------------------------------------------------------------------------------------------
GOLD = [["NOUN", "NOUN", "VERB", "PUNCT"], ["DET", "SCONJ", "SCONJ"]]
PRED = [["NOUN", "PROPN", "VERB", "PUNCT"], ["DET", "SCONJ", "ADV"]]


def test_tag_spans_follow_seqeval_rules():
    # IOB tags: the usual entity spans
    assert tag_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # plain UPOS: prefix = first letter, type = the rest; a run of equal tags is one span
    assert tag_spans(["NOUN", "NOUN", "ADJ"]) == [("OUN", 0, 1), ("DJ", 2, 2)]
    # a tag starting with S (SCONJ, SYM) closes its span at once
    assert tag_spans(["SYM", "SYM"]) == [("YM", 0, 0), ("YM", 1, 1)]
    # a one-letter tag has the empty type "_"
    assert tag_spans(["X", "X", "NUM"]) == [("_", 0, 1), ("UM", 2, 2)]
    assert tag_spans([]) == []


def test_span_f1_hand_computed():
    # sentence 1: gold spans {NOUN 0-1, VERB 2, PUNCT 3}; pred {NOUN 0, PROPN 1, VERB 2, PUNCT 3}: 2 correct
    assert span_counts(GOLD[0], PRED[0]) == (2, 4, 3)
    # sentence 2: gold {DET 0, SCONJ 1, SCONJ 2}; pred {DET 0, SCONJ 1, ADV 2}: 2 correct
    assert span_counts(GOLD[1], PRED[1]) == (2, 3, 3)
    # pooled: P = 4/7, R = 4/6, F1 = 2PR/(P+R) = 8/13; words right: 5 of 7
    assert f1_from_counts(4, 7, 6) == pytest.approx(8 / 13)
    assert f1_from_counts(0, 0, 0) == 0.0 and f1_from_counts(0, 3, 3) == 0.0
    assert f1_from_counts(5, 5, 5) == 1.0


def _logits(pred_rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.zeros(len(pred_rows), width, len(UPOS))
    for i, row in enumerate(pred_rows):
        for j, k in enumerate(row):
            out[i, j, k] = 5.0
    return out


def test_tagging_meter_skips_ignored_positions_and_pools_over_batches():
    idx = {t: i for i, t in enumerate(UPOS)}
    # row 0: [CLS] NOUN NOUN-piece2 NOUN VERB PUNCT [SEP] pad; pieces/specials/padding carry -100 and
    # get deliberately wrong predictions that must not count
    gold0 = [IGNORE, idx["NOUN"], IGNORE, idx["NOUN"], idx["VERB"], idx["PUNCT"], IGNORE, IGNORE]
    pred0 = [idx["X"], idx["NOUN"], idx["ADJ"], idx["PROPN"], idx["VERB"], idx["PUNCT"], idx["SYM"], idx["X"]]
    gold1 = [IGNORE, idx["DET"], idx["SCONJ"], idx["SCONJ"], IGNORE, IGNORE, IGNORE, IGNORE]
    pred1 = [idx["NUM"], idx["DET"], idx["SCONJ"], idx["ADV"], idx["X"], idx["X"], idx["X"], idx["X"]]
    meter = TaggingMeter()
    meter.update(_logits([pred0], 8), torch.tensor([gold0]))   # two batches: counts pool over the split
    meter.update(_logits([pred1], 8), torch.tensor([gold1]))
    out = meter.compute()
    assert out["f1"] == pytest.approx(8 / 13)
    assert out["accuracy"] == pytest.approx(5 / 7)
    # micro F1 with every word its own span would equal accuracy; the seqeval span F1 differs here
    assert out["f1"] != pytest.approx(out["accuracy"])
    with pytest.raises(ValueError):
        TaggingMeter().compute()


def test_x_tag_quirk_of_seqeval_is_kept_across_sentences():
    # seqeval reads a split as one stream with "O" after each sentence; "O" and "X" share the type "_".
    # gold NOUN X | X VERB  -> stream NOUN X O X VERB O -> spans NOUN 0, "_" 1-3 (across the boundary), VERB 4
    # pred NOUN X | NOUN VERB -> NOUN X O NOUN VERB O -> spans NOUN 0, NOUN 3, VERB 4 (the X run never closes)
    idx = {t: i for i, t in enumerate(UPOS)}
    meter = TaggingMeter()
    meter.update(_logits([[idx["NOUN"], idx["X"]], [idx["NOUN"], idx["VERB"]]], 2),
                 torch.tensor([[idx["NOUN"], idx["X"]], [idx["X"], idx["VERB"]]]))
    assert meter.gold_spans.closed() == [("OUN", 0, 0), ("_", 1, 3), ("ERB", 4, 4)]
    assert meter.pred_spans.closed() == [("OUN", 0, 0), ("OUN", 3, 3), ("ERB", 4, 4)]
    out = meter.compute()
    assert out["f1"] == pytest.approx(2 / 3) and out["accuracy"] == pytest.approx(3 / 4)


def test_span_f1_agrees_with_seqeval_when_installed():
    seqeval = pytest.importorskip("seqeval.metrics")
    import warnings

    rng = np.random.default_rng(0)
    weights = np.ones(17)
    weights[UPOS.index("X")] = 6.0          # plenty of the quirky X tag
    weights /= weights.sum()
    gold = [rng.choice(17, size=int(rng.integers(1, 9)), p=weights) for _ in range(120)]
    pred = [np.where(rng.random(len(g)) < 0.6, g, rng.choice(17, size=len(g), p=weights)) for g in gold]
    meter = TaggingMeter()
    for start in range(0, len(gold), 16):          # batches of padded rows
        rows = range(start, min(start + 16, len(gold)))
        target = torch.full((len(rows), 10), IGNORE)
        preds = []
        for r, i in enumerate(rows):
            target[r, 1:1 + len(gold[i])] = torch.from_numpy(gold[i])
            preds.append([0, *pred[i].tolist()])
        meter.update(_logits(preds, 10), target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = seqeval.f1_score([[UPOS[k] for k in g] for g in gold], [[UPOS[k] for k in p] for p in pred])
    assert meter.compute()["f1"] == pytest.approx(expected)


# -- readers ------------------------------------------------------------------------------------------
CONLLU = """# sent_id = 1
# text = Del gato.
1-2\tDel\t_\t_\t_\t_\t_\t_\t_\t_
1\tDe\tde\tADP\t_\t_\t3\tcase\t_\t_
2\tel\tel\tDET\t_\t_\t3\tdet\t_\t_
3\tgato\tgato\tNOUN\t_\t_\t0\troot\t_\tSpaceAfter=No
3.1\tes\t_\t_\t_\t_\t_\t_\t_\t_
4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

# text withheld by the treebank: dropped
1\t_\t_\tNOUN\t_\t_\t0\troot\t_\t_
2\t_\t_\tVERB\t_\t_\t1\tdep\t_\t_

1\tcon m\u200ceo\tcon mèo\tNOUN\t_\t_\t0\troot\t_\t_
2\tđen\tđen\tADJ\t_\t_\t1\tamod\t_\t_
"""


def test_read_conllu_syntactic_words_and_xtreme_normalisation(tmp_path):
    p = tmp_path / "vi_vtb-ud-dev.conllu"
    p.write_text(CONLLU, encoding="utf-8")
    assert read_conllu(str(p)) == [
        (["De", "el", "gato", "."], ["ADP", "DET", "NOUN", "PUNCT"]),
        (["conmeo", "đen"], ["NOUN", "ADJ"]),
    ]


def test_read_conllu_and_xtreme_tsv_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "a.conllu"
    bad.write_text("1\tcat\tcat\tNOUN\n")
    with pytest.raises(DataError, match=r"a.conllu:1: .*10 tab-separated"):
        read_conllu(str(bad))
    tsv = tmp_path / "dev-en.tsv"
    tsv.write_text("The\tDET\ncat\tNOUN\n\nRuns\tVERB\n\n\nok\tNOUNS\n")
    with pytest.raises(DataError, match=r"dev-en.tsv:7: 'NOUNS' is not a UPOS tag"):
        read_xtreme_pos(str(tsv))
    tsv.write_text("The\tDET\ncat\tNOUN\n\nRuns\tVERB\n\n\n")
    assert read_xtreme_pos(str(tsv)) == [(["The", "cat"], ["DET", "NOUN"]), (["Runs"], ["VERB"])]


def test_read_pawsx_with_header_without_header_and_release_columns(tmp_path):
    xtreme = tmp_path / "dev-en.tsv"
    xtreme.write_text('sentence1\tsentence2\tlabel\r\nA cat .\tThe cat .\t1\r\n"Quoted" x\ty\t0\r\n')
    s1, s2, y = read_pawsx(str(xtreme))
    assert s1 == ["A cat .", '"Quoted" x'] and s2 == ["The cat .", "y"] and y.tolist() == [1, 0]
    bare = tmp_path / "bare.tsv"
    bare.write_text("a\tb\t0\nc\td\t1\n")      # no header: the first example is kept
    assert read_pawsx(str(bare))[2].tolist() == [0, 1]
    release = tmp_path / "dev_2k.tsv"
    release.write_text("id\tsentence1\tsentence2\tlabel\n7\ta\tb\t1\n")
    assert read_pawsx(str(release))[:2] == (["a"], ["b"])
    release.write_text("id\tsentence1\tsentence2\tlabel\n7\ta\tb\tyes\n")
    with pytest.raises(DataError, match=r"dev_2k.tsv:2: label must be 0 or 1"):
        read_pawsx(str(release))


# -- parameters and errors without transformers -----------------------------------------------------
def test_parameters_are_validated_at_construction():
    for params, msg in [
        ({"languages": "en"}, "languages must be a non-empty list"),
        ({"languages": ["en", "en"]}, "must not repeat"),
        ({"languages": ["English"]}, "ISO 639"),
        ({"languages": ["en", "te"]}, "PAWS-X languages"),
        ({"max_length": 4}, "max_length must be an integer in"),
        ({"train_files": {"de": "x.tsv"}, "languages": ["en"]}, "not in languages"),
        ({"local_files_only": "yes"}, "local_files_only must be true or false"),
    ]:
        with pytest.raises(SpecError, match=msg):
            instantiate(PAWSX, params, "problem")
    with pytest.raises(SpecError, match="unknown parameter 'train_files'"):
        instantiate(UDPOS, {"train_files": {}}, "problem")
    p = UDPOS(languages=["en", "vi"])
    assert p.tasks == ("en", "vi") and UDPOS.tasks == ("en", "zh", "te", "vi")
    assert PAWSX().tasks == ("en", "zh", "de", "es")
    assert PROBLEMS.get("pawsx") is PAWSX and PROBLEMS.get("udpos") is UDPOS
    assert PAWSX.multi_input and UDPOS.multi_input
    assert PAWSX.defaults["lr"] == 2e-5 and PAWSX.defaults["batch_size"] == 32 and PAWSX.defaults["grad_clip"] == 1.0
    assert UDPOS().metrics()["en"][0].name == "f1"
    # the paper's optimiser: AdamW, lr 2e-5, eps 1e-8, no weight decay
    from study.training import make_optimizer

    for cls in (PAWSX, UDPOS):
        d = cls.defaults
        opt = make_optimizer(d["optimizer"], [torch.nn.Parameter(torch.zeros(1))], d["lr"], d["weight_decay"])
        assert type(opt) is torch.optim.AdamW
        assert (opt.defaults["lr"], opt.defaults["eps"], opt.defaults["weight_decay"]) == (2e-5, 1e-8, 0.0)
        assert (d["batch_size"], d["grad_clip"]) == (32, 1.0)


def test_without_transformers_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(_xtreme, "has_transformers", lambda: False)
    p = PAWSX(root=str(tmp_path))
    with pytest.raises(LitmusError, match=r"problem pawsx needs the nlp extra: pip install 'mtl-litmus\[nlp\]'"):
        p.check()
    with pytest.raises(LitmusError, match="nlp extra"):
        p.build_encoder()
    with pytest.raises(LitmusError, match="problem udpos needs the nlp extra"):
        UDPOS(root=str(tmp_path)).build_encoder()


def test_data_file_discovery_and_missing_files(tmp_path):
    root = tmp_path / "pawsx"
    (root / "zh").mkdir(parents=True)
    (root / "train-en.tsv").write_text("a\tb\t1\n")
    (root / "zh" / "translated_train.tsv").write_text("id\tsentence1\tsentence2\tlabel\n1\ta\tb\t0\n")
    (root / "mine.tsv").write_text("a\tb\t0\n")
    p = PAWSX(root=str(root), languages=["en", "zh"], train_files={"zh": "mine.tsv"})
    assert p.data_files("train", "en") == [str(root / "train-en.tsv")]
    assert p.data_files("train", "zh") == [str(root / "mine.tsv")]
    assert PAWSX(root=str(root), languages=["zh"]).data_files("train", "zh") == [str(root / "zh" / "translated_train.tsv")]
    with pytest.raises(DataError, match=r"no val file for 'en'.*dev-en.tsv.*dev_2k.tsv"):
        p.data_files("val", "en")
    u = tmp_path / "ud"
    for tb in ("UD_English-EWT/en_ewt", "UD_English-GUM/en_gum", "UD_Telugu-MTG/te_mtg"):
        (u / tb.split("/")[0]).mkdir(parents=True, exist_ok=True)
        (u / f"{tb}-ud-test.conllu").write_text("")
    (u / "test-te.tsv").write_text("")
    (u / "vi").mkdir()
    (u / "vi" / "dev.bert-base-multilingual-cased").write_text("")
    q = UDPOS(root=str(u), languages=["en", "te"])
    assert UDPOS(root=str(u)).data_files("val", "vi") == [str(u / "vi" / "dev.bert-base-multilingual-cased")]
    # every English treebank merged; an XTREME file wins over the release tree
    assert q.data_files("test", "en") == [str(u / "UD_English-EWT/en_ewt-ud-test.conllu"),
                                         str(u / "UD_English-GUM/en_gum-ud-test.conllu")]
    assert q.data_files("test", "te") == [str(u / "test-te.tsv")]
    with pytest.raises(DataError, match="no dev file for 'en'"):
        q.data_files("val", "en")


def test_features_batches_trim_to_the_longest_row():
    feats = pack([[2, 5, 6, 3], [2, 7, 3], [2, 3]], [[0, 0, 1, 1], [0, 0, 0], [0, 0]], np.array([1, 0, 1]), 0)
    assert feats.input_ids.tolist() == [[2, 5, 6, 3], [2, 7, 3, 0], [2, 3, 0, 0]]
    p = PAWSX()
    (x, y), (x2, y2) = list(p.batches(feats, 2, shuffle=False, generator=None))
    assert x["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, 0]] and y.tolist() == [1, 0]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert x["token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    assert x2["input_ids"].tolist() == [[2, 3]] and x2["attention_mask"].tolist() == [[1, 1]]
    assert all(v.dtype == torch.int64 for v in x.values())
    order = [b[1].tolist() for b in p.batches(feats, 1, shuffle=True, generator=torch.Generator().manual_seed(3))]
    again = [b[1].tolist() for b in p.batches(feats, 1, shuffle=True, generator=torch.Generator().manual_seed(3))]
    assert order == again and sorted(sum(order, [])) == [0, 1, 1]
    # tagging labels are trimmed with the inputs
    tag = pack([[2, 9, 3], [2, 3]], None, [[IGNORE, 4, IGNORE], [IGNORE, IGNORE]], 0)
    (xt, yt), = list(UDPOS().batches(tag, 4, shuffle=False, generator=None))
    assert yt.tolist() == [[IGNORE, 4, IGNORE], [IGNORE, IGNORE, IGNORE]] and xt["input_ids"].shape == (2, 3)


def test_feature_cache_round_trip_and_corrupt_file(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    feats = pack([[2, 5, 3]], None, [[IGNORE, 1, IGNORE]], 0)
    path = cache.path("udpos", "en", "train", cache.key(a=1))
    assert cache.get(path) is None
    cache.put(path, feats)
    back = cache.get(path)
    assert isinstance(back, Features) and all(torch.equal(a, b) for a, b in zip(back.tensors().values(),
                                                                                  feats.tensors().values()))
    assert [f.name for f in (tmp_path / "c").iterdir()] == [path.name]  # no temporary file left
    path.write_bytes(b"not a torch file")
    assert cache.get(path) is None
    assert cache.key(a=1, b=[1, 2]) == cache.key(b=[1, 2], a=1) != cache.key(a=2, b=[1, 2])


# -- with transformers: tiny BERT, tiny data, one epoch through the trial ----------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",",
         "the", "a", "cat", "dog", "sat", "on", "mat", "big", "red", "is", "run", "##s", "##ning", "house",
         "der", "die", "hund", "katze", "ist", "groß", "haus",
         "el", "la", "perro", "gato", "es", "grande", "casa",
         "猫", "狗", "在", "上", "大", "是", "的", "房",
         "con", "mèo", "là", "nhà", "đen", "ఇది", "ఒక", "పిల్లి"]
WORDS = {"en": ["the", "a", "cat", "dogs", "sat", "on", "mat", "big", "red", "is", "running", "house"],
         "de": ["der", "die", "hund", "katze", "ist", "groß", "haus"],
         "es": ["el", "la", "perro", "gato", "es", "grande", "casa"],
         "zh": ["猫", "狗", "在", "上", "大", "是", "的", "房"],
         "vi": ["con", "mèo", "là", "nhà", "đen"],
         "te": ["ఇది", "ఒక", "పిల్లి", "బాగుంది"]}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer(str(vocab), do_lower_case=False)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def _sentence(rng, lang: str, n: int) -> list[str]:
    return [WORDS[lang][i] for i in rng.integers(0, len(WORDS[lang]), size=n)]


def write_pawsx(root, langs=("en", "zh", "de", "es"), n=(12, 6, 6), seed=0):
    """XTREME layout for all but Spanish, whose files are in the PAWS-X release layout."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for lang in langs:
        for split, count in zip(("train", "dev", "test"), n):
            rows = []
            for i in range(count):
                sep = "" if lang == "zh" else " "
                a, b = sep.join(_sentence(rng, lang, 5)), sep.join(_sentence(rng, lang, 4))
                rows.append((i, a, b, int(rng.integers(0, 2))))
            if lang == "es":
                name = {"train": "translated_train.tsv", "dev": "dev_2k.tsv", "test": "test_2k.tsv"}[split]
                os.makedirs(os.path.join(root, lang), exist_ok=True)
                text = "id\tsentence1\tsentence2\tlabel\n" + "".join(f"{i}\t{a}\t{b}\t{y}\n" for i, a, b, y in rows)
                path = os.path.join(root, lang, name)
            else:
                text = "sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for _, a, b, y in rows)
                path = os.path.join(root, f"{split}-{lang}.tsv")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)


def write_udpos(root, n=(10, 5, 5), seed=0):
    """en, zh: XTREME TSV; te: flat CoNLL-U; vi: the UD release tree."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "dev", "test"), n):
        for lang in ("en", "zh", "te", "vi"):
            sents = [(_sentence(rng, lang, int(rng.integers(2, 7))), None) for _ in range(count)]
            sents = [(w, [UPOS[int(rng.integers(0, 17))] for _ in w]) for w, _ in sents]
            if lang in ("en", "zh"):
                path = os.path.join(root, f"{split}-{lang}.tsv")
                text = "\n".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) for ws, ts in sents)
            else:
                lines = []
                for k, (ws, ts) in enumerate(sents):
                    lines.append(f"# sent_id = {k}")
                    lines += [f"{j + 1}\t{w}\t{w}\t{t}\t_\t_\t0\tdep\t_\t_" for j, (w, t) in enumerate(zip(ws, ts))]
                    lines.append("")
                text = "\n".join(lines) + "\n"
                if lang == "te":
                    path = os.path.join(root, f"{split}-te.conllu")
                else:
                    path = os.path.join(root, "ud-treebanks-v2.5", "UD_Vietnamese-VTB", f"vi_vtb-ud-{split}.conllu")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)


def _config(problem: str, params: dict, method="ew", **train) -> dict:
    from study.weighting.method import normalize_method

    return {"study": "test", "spec_hash": "0", "problem": problem, "problem_params": params,
            "architecture": "hps", "architecture_params": {}, "method": normalize_method(method), "seed": 0,
            "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "grad_clip": 1.0,
                      "device": "cpu", **train}}


def test_tagging_features_first_piece_unknown_words_and_long_sentences(tiny_bert):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    ids = {t: i for i, t in enumerate(VOCAB)}
    words = ["the", "dogs", "xyz", "running", ""]
    tags = ["DET", "NOUN", "X", "VERB", "PUNCT"]
    feats = tagging_features([(words, tags)], tok, max_length=16)
    tag = {t: i for i, t in enumerate(UPOS)}
    assert feats.input_ids[0, :9].tolist() == [ids["[CLS]"], ids["the"], ids["dog"], ids["##s"], ids["[UNK]"],
                                               ids["run"], ids["##ning"], ids["[UNK]"], ids["[SEP]"]]
    assert feats.labels[0, :9].tolist() == [IGNORE, tag["DET"], tag["NOUN"], IGNORE, tag["X"], tag["VERB"],
                                            IGNORE, tag["PUNCT"], IGNORE]
    assert int(feats.lengths[0]) == 9
    # 8 pieces of budget (max_length 10 minus [CLS]/[SEP]): cut at word boundaries, no word lost
    long = (["the", "dogs", "running", "cat", "running", "mat", "dogs"], ["DET", "NOUN", "VERB", "NOUN", "VERB",
                                                                          "NOUN", "NOUN"])
    f = tagging_features([long], tok, max_length=10)
    assert f.lengths.tolist() == [10, 5]       # [the dog ##s run ##ning cat run ##ning] | [mat dog ##s]
    assert int((f.labels != IGNORE).sum()) == 7
    assert f.input_ids[1, :5].tolist() == [ids["[CLS]"], ids["mat"], ids["dog"], ids["##s"], ids["[SEP]"]]


def test_model_loading_errors_are_one_line_and_say_how_to_fix(tmp_path, tiny_bert):
    with pytest.raises(DataError, match=r"not in the local Hugging Face cache .*hf download no-such-org/no-such-model"):
        PAWSX(root=str(tmp_path), model="no-such-org/no-such-model").build_encoder()
    with pytest.raises(DataError, match="does not exist"):
        PAWSX(model=str(tmp_path / "nowhere")).build_encoder()
    with pytest.raises(DataError, match="has no config.json"):
        PAWSX(model=str(tmp_path)).build_encoder()
    root = tmp_path / "p"
    write_pawsx(str(root), langs=("en",), n=(2, 2, 2))
    PAWSX(root=str(root), model=tiny_bert, languages=["en"]).check()   # all there: no error
    with pytest.raises(DataError, match="data folder .* does not exist"):
        PAWSX(root=str(tmp_path / "none"), model=tiny_bert).check()


def test_encoder_outputs_and_heads(tiny_bert):
    x = {"input_ids": torch.tensor([[2, 7, 9, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
         "token_type_ids": torch.zeros(1, 5, dtype=torch.long)}
    pooled = PAWSX(model=tiny_bert).build_encoder()
    tokens = UDPOS(model=tiny_bert).build_encoder()
    assert pooled(x).shape == (1, 32) and tokens(x).shape == (1, 5, 32)
    assert not any("pooler" in n for n, _ in tokens.named_parameters())   # POS has no unused pooler
    head = PAWSX(model=tiny_bert).build_decoder("en")
    assert isinstance(head[0], torch.nn.Dropout) and head[0].p == 0.1
    assert (head[1].in_features, head[1].out_features) == (32, 2)
    assert UDPOS(model=tiny_bert).build_decoder("vi")[1].out_features == 17
    # padding does not change the real positions' outputs (what makes per-batch trimming exact)
    tokens.eval()
    trimmed = {k: v[:, :4] for k, v in x.items()}
    assert torch.allclose(tokens(x)[:, :4], tokens(trimmed), atol=1e-5)


def test_pawsx_one_epoch_through_the_trial_and_feature_cache(tmp_path, tiny_bert, monkeypatch):
    from study.training import Trial, train_trial

    root, cache = str(tmp_path / "pawsx"), str(tmp_path / "cache")
    write_pawsx(root)
    params = {"root": root, "model": tiny_bert, "cache_dir": cache}
    metrics = train_trial(_config("pawsx", params))
    for lang in ("en", "zh", "de", "es"):
        for split in ("val", "test"):
            acc = metrics[f"{split}/{lang}/accuracy"]
            assert 0.0 <= acc <= 1.0 and acc * 6 == pytest.approx(round(acc * 6))   # k of 6 examples right
            assert math.isfinite(metrics[f"{split}/{lang}/loss"])
        assert math.isfinite(metrics[f"train/{lang}/loss"])
    assert metrics["epoch"] == 1
    assert len(os.listdir(cache)) == 12     # 4 languages x 3 splits

    # a second trial on the node reads the cache: no tokenisation at all
    def no_tokenising(*a, **k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(PAWSX, "featurize", no_tokenising)
    data = PAWSX(**params).load(seed=1)
    assert [len(data[s]["de"]) for s in ("train", "val", "test")] == [12, 6, 6]
    monkeypatch.undo()
    # a changed file is a new cache entry
    with open(os.path.join(root, "dev-de.tsv"), "a", encoding="utf-8") as f:
        f.write("der hund\tdie katze\t1\n")
    assert len(PAWSX(**params).load(seed=0)["val"]["de"]) == 7
    assert len(os.listdir(cache)) == 13
    # RLW runs too (each language its own batch, one shared encoder)
    trial = Trial(_config("pawsx", {**params, "languages": ["en", "zh"]}, "rlw"))
    out = trial.run_epoch()
    assert set(k for k in out if k.startswith("val/")) == {"val/en/accuracy", "val/en/loss", "val/zh/accuracy",
                                                          "val/zh/loss"}


def test_udpos_one_epoch_through_the_trial(tmp_path, tiny_bert):
    from study.training import train_trial

    root = str(tmp_path / "udpos")
    write_udpos(root)
    metrics = train_trial(_config("udpos", {"root": root, "model": tiny_bert, "cache_dir": str(tmp_path / "c")}))
    for lang in ("en", "zh", "te", "vi"):
        for split in ("val", "test"):
            assert 0.0 <= metrics[f"{split}/{lang}/f1"] <= 1.0
            assert 0.0 <= metrics[f"{split}/{lang}/accuracy"] <= 1.0
            assert math.isfinite(metrics[f"{split}/{lang}/loss"])
    assert math.isfinite(metrics["val_score"])


def test_udpos_learns_a_fixed_batch(tmp_path, tiny_bert):
    """A few AdamW steps on one batch cut the tagging loss: gradients reach the encoder and the heads."""
    from study.training import Trial

    root = str(tmp_path / "udpos")
    write_udpos(root)
    trial = Trial(_config("udpos", {"root": root, "model": tiny_bert, "languages": ["en", "vi"],
                                    "cache_dir": str(tmp_path / "c")}, lr=3e-3))
    problem = trial.problem
    xs, ys = {}, {}
    for t in problem.tasks:
        xs[t], ys[t] = next(iter(problem.batches(trial.data["train"][t], 8, shuffle=False, generator=None)))
    trial.model.train()
    first = None
    for _ in range(30):
        trial.optimizer.zero_grad()
        losses = trial.step.losses(problem, xs, ys)
        trial.step.backward(losses, trial.rng)
        trial.optimizer.step()
        first = float(losses.detach().sum()) if first is None else first
    trial.model.eval()
    with torch.no_grad():
        final = float(trial.step.losses(problem, xs, ys).sum())
    assert final < 0.5 * first, (first, final)


# -- specs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pawsx", "udpos"])
def test_multilingual_table_specs(name):
    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "search_spaces", f"{name}.yaml")
    with open(path) as f:
        raw = yaml.safe_load(f)
    cls = PROBLEMS.get(name)
    assert raw["problem"]["name"] == name and raw["architecture"] == "hps"
    problem = instantiate(cls, {k: v for k, v in raw["problem"].items() if k != "name"}, "problem")
    assert problem.tasks == cls.tasks and problem.max_length == 128
    assert problem.model == "bert-base-multilingual-cased" and problem.local_files_only
    if name == "pawsx":   # the machine-translated training sets are found in either layout, not named
        assert problem.train_files == {}
    assert raw["train"] == {k: cls.defaults[k] for k in raw["train"]}
    assert raw["train"]["optimizer"] == "adamw" and raw["train"]["lr"] == 2e-5 and raw["train"]["grad_clip"] == 1.0
    names = [m if isinstance(m, str) else m["name"] for m in raw["methods"]]
    # the twelve baselines less RotoGrad, which needs one shared representation (single-input problems)
    assert {"ew", "rgw"} <= set(names) and names.count("rlw") == 6 and raw["seeds"] == 3
    assert "rotograd" not in names and len(names) == 20
    from study.weighting import AGGREGATORS, WEIGHTINGS

    missing = [n for n in set(names) if n not in WEIGHTINGS.names() and n not in AGGREGATORS.names()]
    if missing:
        pytest.skip(f"methods not registered yet: {', '.join(sorted(missing))}")
    from study.spec import load_spec

    spec = load_spec(path, check_data=False)
    assert len(spec.trial_configs()) == 20 * 3


def test_feature_cache_keyed_by_file_content_and_tokenizer(tmp_path, tiny_bert, monkeypatch):
    """The same bytes elsewhere reuse the cache; another tokenizer (one more vocabulary entry) does not."""
    import shutil

    cache = str(tmp_path / "cache")
    root = tmp_path / "a"
    write_pawsx(str(root), langs=("en",), n=(3, 2, 2))
    PAWSX(root=str(root), model=tiny_bert, languages=["en"], cache_dir=cache).load(seed=0)
    assert len(os.listdir(cache)) == 3
    # the same files in another folder: read from the cache, nothing tokenised
    shutil.copytree(root, tmp_path / "b")
    monkeypatch.setattr(PAWSX, "featurize", lambda *a, **k: pytest.fail("tokenised again"))
    PAWSX(root=str(tmp_path / "b"), model=tiny_bert, languages=["en"], cache_dir=cache).load(seed=0)
    monkeypatch.undo()
    assert len(os.listdir(cache)) == 3
    # a tokenizer with another vocabulary: new entries for every split
    import transformers

    other = tmp_path / "other-bert"
    shutil.copytree(tiny_bert, other)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    (tmp_path / "vocab.txt").write_text("\n".join([*VOCAB, "##ing"]) + "\n", encoding="utf-8")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False).save_pretrained(str(other))
    assert "##ing" in transformers.AutoTokenizer.from_pretrained(str(other), local_files_only=True).get_vocab()
    PAWSX(root=str(root), model=str(other), languages=["en"], cache_dir=cache).load(seed=0)
    assert len(os.listdir(cache)) == 6
    # the fingerprint does not depend on where the tokenizer was loaded from
    here = transformers.AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    copy = shutil.copytree(tiny_bert, tmp_path / "copy-bert")
    there = transformers.AutoTokenizer.from_pretrained(str(copy), local_files_only=True)
    assert _xtreme.tokenizer_fingerprint(here) == _xtreme.tokenizer_fingerprint(there)


def test_pawsx_one_epoch_on_xtreme_folder_with_release_test_sets(tmp_path, tiny_bert):
    """XTREME's own layout as its preprocessing leaves it (csv.writer: CRLF, no header; translate-train
    files with 5 columns; unlabelled test-{lang}.tsv) plus the release's labelled {lang}/test_2k.tsv."""
    import csv

    from study.training import train_trial

    rng = np.random.default_rng(4)
    root = tmp_path / "xtreme_pawsx"

    def rows(lang, n, cols):
        out = []
        for i in range(n):
            a, b = " ".join(_sentence(rng, lang, 4)), " ".join(_sentence(rng, lang, 3))
            out.append({"xtreme": [a, b, str(i % 2)], "test": [a, b], "mt": ["E1", "E2", a, b, str(i % 2)],
                        "release": [str(i), a, b, str(i % 2)]}[cols])
        return out

    def put(path, data, header=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t")
            if header:
                w.writerow(header)
            w.writerows(data)

    put(root / "train-en.tsv", rows("en", 8, "xtreme"))
    put(root / "translated" / "en-de-translated.tsv", rows("de", 8, "mt") + [["malformed"]])
    for lang in ("en", "de"):
        put(root / f"dev-{lang}.tsv", rows(lang, 4, "xtreme"))
        put(root / f"test-{lang}.tsv", rows(lang, 4, "test"))
        put(root / lang / "test_2k.tsv", rows(lang, 5, "release"), header=["id", "sentence1", "sentence2", "label"])
    assert (root / "train-en.tsv").read_bytes().count(b"\r\n") == 8
    params = {"root": str(root), "model": tiny_bert, "languages": ["en", "de"], "cache_dir": str(tmp_path / "c")}
    data = PAWSX(**params).load(seed=0)
    assert {(s, t): len(data[s][t]) for s in data for t in data[s]} == {
        ("train", "en"): 8, ("train", "de"): 8, ("val", "en"): 4, ("val", "de"): 4, ("test", "en"): 5,
        ("test", "de"): 5}
    metrics = train_trial(_config("pawsx", params))
    for lang in ("en", "de"):
        acc = metrics[f"test/{lang}/accuracy"]
        assert acc * 5 == pytest.approx(round(acc * 5))           # k of the release's 5 test pairs
