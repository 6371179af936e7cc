"""PAWS-X and UD-POS file discovery on the layouts researchers have: XTREME's preprocessed folder (its
unlabelled test files included), XTREME's translate-train files, the PAWS-X release, CoNLL-U.

Fixtures are written in the exact formats: XTREME's PAWS-X files with ``csv.writer(delimiter="\\t")``
(CRLF line ends, no header; test files without the label), the PAWS-X release with a header and LF
line ends, XTREME's UD-POS test files as bare tokens (no trailing newline, as XTREME writes them).
No model is needed.
"""

from __future__ import annotations

import csv
import logging

import pytest

from study.errors import DataError
from study.problems.pawsx import PAWSX, is_unlabelled, read_pawsx
from study.problems.udpos import UDPOS, read_pos_files, read_xtreme_pos, tsv_labels

RELEASE_HEADER = ["id", "sentence1", "sentence2", "label"]


def csv_tsv(path, rows):
    """What XTREME's utils_preprocess.py writes: csv.writer, tab delimiter, CRLF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t").writerows(rows)


def release_tsv(path, rows):
    """The PAWS-X release (x-final/{lang}/*.tsv): header, id column, LF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in [RELEASE_HEADER, *rows]), encoding="utf-8")


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# -- PAWS-X: formats -----------------------------------------------------------------------------------
def test_csv_writer_fixture_really_has_crlf_and_raw_quotes(tmp_path):
    p = tmp_path / "train-en.tsv"
    csv_tsv(p, [["He said \"hi\" .", "b", "1"]])
    assert p.read_bytes() == b'"He said ""hi"" ."\tb\t1\r\n'
    # fields are split on tabs only, without quote processing (XTREME reads with quotechar=None)
    s1, s2, y = read_pawsx(str(p))
    assert s1 == ['"He said ""hi"" ."'] and s2 == ["b"] and y.tolist() == [1]


def test_is_unlabelled_on_each_format(tmp_path):
    cases = {
        "xtreme_test": ([["a b", "c d"], ["e", "f"]], True),           # XTREME's test-{lang}.tsv
        "xtreme_train": ([["a", "b", "1"], ["c", "d", "0"]], False),
        "translated5": ([["A", "B", "a", "b", "0"]], False),
        "headed_pairs": ([["sentence1", "sentence2"], ["a", "b"]], True),
        "empty": ([], False),
    }
    for name, (rows, want) in cases.items():
        csv_tsv(tmp_path / f"{name}.tsv", rows)
        assert is_unlabelled(str(tmp_path / f"{name}.tsv")) is want, name
    release_tsv(tmp_path / "test_2k.tsv", [[1, "a", "b", 0]])
    assert is_unlabelled(str(tmp_path / "test_2k.tsv")) is False
    # a header alone is not a labelled row, and a labelled row after unlabelled ones wins
    csv_tsv(tmp_path / "mixed.tsv", [["a", "b"], ["c", "d", "1"]])
    assert is_unlabelled(str(tmp_path / "mixed.tsv")) is False


def test_translated_file_five_columns_lenient(tmp_path, caplog):
    p = tmp_path / "translated" / "en-de-translated.tsv"
    csv_tsv(p, [["The cat .", "A cat .", "Die Katze .", "Eine Katze .", "1"],
                ["x", "y", "z"],                                   # 3 fields, label 'z': skipped
                ["A", "B", "Der Hund", "Ein Hund", "0"],
                ["only one field"],                                # skipped
                ["a", "b", "c", "d", "e", "1"],                    # 6 fields: skipped
                ["E1", "E2", "Haus", "Ein Haus", "1"],
                ["E1", "E2", "G1", "G2", "1"]])
    with caplog.at_level(logging.WARNING, logger="study.problems.pawsx"):
        s1, s2, y = read_pawsx(str(p))
    # the translation is in columns 3-4 (the two fields before the label)
    assert s1 == ["Die Katze .", "Der Hund", "Haus", "G1"] and s2 == ["Eine Katze .", "Ein Hund", "Ein Haus", "G2"]
    assert y.tolist() == [1, 0, 1, 1]
    assert "skipped 3 malformed rows of 7" in caplog.text
    # the 3-column form XTREME's PawsxProcessor reads is accepted too
    csv_tsv(p, [["a", "b", "0"], ["c", "d", "1"]])
    assert read_pawsx(str(p))[2].tolist() == [0, 1]
    # exactly half malformed: kept; more than half: rejected in one line
    csv_tsv(p, [["A", "B", "a", "b", "1"], ["bad"]])
    assert read_pawsx(str(p))[0] == ["a"]
    csv_tsv(p, [["A", "B", "a", "b", "1"], ["bad"], ["A", "B", "a", "b", "2"]])
    with pytest.raises(DataError) as e:
        read_pawsx(str(p))
    assert "en-de-translated.tsv: 2 of 3 rows are not" in one_line(e) and "rejected" in str(e.value)
    # the same malformed rows in a file that is not a translate-train file are an error, not skipped
    strict = tmp_path / "train-de.tsv"
    csv_tsv(strict, [["a", "b", "1"], ["A", "B", "a", "b", "1"]])
    with pytest.raises(DataError, match=r"train-de.tsv:2: expected sentence1<TAB>sentence2<TAB>label .*5 fields"):
        read_pawsx(str(strict))


def test_two_field_rows_in_a_labelled_file_name_the_line(tmp_path):
    p = tmp_path / "train-en.tsv"
    csv_tsv(p, [["a", "b", "1"], ["c", "d", "0"], ["e", "f"]])
    with pytest.raises(DataError) as e:
        read_pawsx(str(p))
    msg = one_line(e)
    assert "train-en.tsv:3: 2 fields (sentence1<TAB>sentence2), the label is missing" in msg
    assert "test_2k" not in msg                          # not mistaken for XTREME's unlabelled test file
    q = tmp_path / "test-en.tsv"
    csv_tsv(q, [["a", "b"], ["c", "d"]])
    with pytest.raises(DataError, match=r"test-en.tsv is unlabelled .*drops the test labels"):
        read_pawsx(str(q))


# -- PAWS-X: which file is read ---------------------------------------------------------------------
def test_candidates_in_order(tmp_path):
    r = str(tmp_path)
    p = PAWSX(root=r)
    assert p.candidates("train", "en") == [f"{r}/train-en.tsv", f"{r}/en/train.tsv"]
    assert p.candidates("train", "de") == [f"{r}/train-de.tsv", f"{r}/translated/en-de-translated.tsv",
                                           f"{r}/de/translated_train.tsv"]
    assert p.candidates("val", "zh") == [f"{r}/dev-zh.tsv", f"{r}/zh/dev_2k.tsv"]
    assert p.candidates("test", "es") == [f"{r}/test-es.tsv", f"{r}/es/test_2k.tsv"]


def test_first_existing_labelled_file_wins(tmp_path):
    """XTREME's folder and the PAWS-X release merged into one root: walk down each candidate list."""
    r = tmp_path
    csv_tsv(r / "train-en.tsv", [["x1", "x2", "1"]])
    release_tsv(r / "en" / "train.tsv", [[1, "r1", "r2", 0]])
    csv_tsv(r / "train-de.tsv", [["own", "own", "1"]])
    csv_tsv(r / "translated" / "en-de-translated.tsv", [["A", "B", "mt1", "mt2", "0"]])
    release_tsv(r / "de" / "translated_train.tsv", [[1, "rel1", "rel2", 1]])
    csv_tsv(r / "dev-de.tsv", [["d1", "d2", "0"]])
    release_tsv(r / "de" / "dev_2k.tsv", [[1, "rd1", "rd2", 1]])
    p = PAWSX(root=str(r), languages=["en", "de"])

    def first(split, lang):
        files = p.data_files(split, lang)
        assert len(files) == 1
        return read_pawsx(files[0])[0][0]

    assert first("train", "en") == "x1"
    (r / "train-en.tsv").unlink()
    assert first("train", "en") == "r1"
    assert first("train", "de") == "own"
    (r / "train-de.tsv").unlink()
    assert first("train", "de") == "mt1"
    (r / "translated" / "en-de-translated.tsv").unlink()
    assert first("train", "de") == "rel1"
    assert first("val", "de") == "d1"
    (r / "dev-de.tsv").unlink()
    assert first("val", "de") == "rd1"
    # an unlabelled file earlier in the list is passed over for a labelled one later
    csv_tsv(r / "translated" / "en-de-translated.tsv", [["A", "B"], ["C", "D"]])
    assert first("train", "de") == "rel1"


def test_test_split_labelled_xtreme_file_or_release(tmp_path):
    r = tmp_path
    csv_tsv(r / "test-de.tsv", [["t1", "t2"], ["t3", "t4"]])             # XTREME: label dropped
    release_tsv(r / "de" / "test_2k.tsv", [[1, "a", "b", 1], [2, "c", "d", 0]])
    p = PAWSX(root=str(r), languages=["de"])
    assert p.data_files("test", "de") == [str(r / "de" / "test_2k.tsv")]
    assert read_pawsx(p.data_files("test", "de")[0])[2].tolist() == [1, 0]
    # a labelled test-{lang}.tsv (e.g. LibMTL's folder, with a header) is used as it is
    csv_tsv(r / "test-de.tsv", [["sentence1", "sentence2", "label"], ["t1", "t2", "0"]])
    assert p.data_files("test", "de") == [str(r / "test-de.tsv")]
    assert read_pawsx(str(r / "test-de.tsv"))[2].tolist() == [0]


def test_unlabelled_without_labelled_alternative_one_line_naming_the_file(tmp_path):
    r = tmp_path
    p = PAWSX(root=str(r), languages=["en", "zh"])
    csv_tsv(r / "test-zh.tsv", [["a", "b"]])
    with pytest.raises(DataError) as e:
        p.data_files("test", "zh")
    msg = one_line(e)
    assert msg.startswith(f"problem pawsx: {r}/test-zh.tsv is unlabelled")
    assert f"labelled test set at {r}/zh/test_2k.tsv (x-final/zh/test_2k.tsv)" in msg
    csv_tsv(r / "dev-zh.tsv", [["a", "b"]])
    with pytest.raises(DataError) as e:
        p.data_files("val", "zh")
    assert f"labelled dev set at {r}/zh/dev_2k.tsv (x-final/zh/dev_2k.tsv)" in one_line(e)
    csv_tsv(r / "translated" / "en-zh-translated.tsv", [["a", "b"]])
    with pytest.raises(DataError) as e:
        p.data_files("train", "zh")
    assert (f"machine-translated training set at {r}/zh/translated_train.tsv (x-final/zh/translated_train.tsv)"
            in one_line(e))
    csv_tsv(r / "train-en.tsv", [["a", "b"]])
    with pytest.raises(DataError) as e:
        p.data_files("train", "en")
    assert f"labelled training set at {r}/en/train.tsv (x-final/en/train.tsv)" in one_line(e)
    # nothing at all: the candidates are listed
    with pytest.raises(DataError, match=r"no val file for 'en': looked for .*dev-en.tsv, .*en/dev_2k.tsv"):
        p.data_files("val", "en")
    # an unlabelled train_files override is refused the same way
    csv_tsv(r / "mine.tsv", [["a", "b"]])
    q = PAWSX(root=str(r), languages=["zh"], train_files={"zh": "mine.tsv"})
    with pytest.raises(DataError) as e:
        q.data_files("train", "zh")
    assert "train_files.zh" in one_line(e) and "translated_train.tsv" in str(e.value)


# -- UD-POS ---------------------------------------------------------------------------------------------
TAGGED = "The\tDET\ncat\tNOUN\n\nRuns\tVERB\n"
TOKENS = "The\ncat\n\nRuns"                      # XTREME's test-{lang}.tsv: tokens only, no final newline
ALL_X = "The\tX\ncat\tX\n\nRuns\tX\n"           # udpos_processed_maxlen128/{lang}/test.{model}
CONLLU = ("# text = A dog\n1\tA\ta\tDET\t_\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t0\troot\t_\t_\n\n"
          "1\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\n\n")


def test_tsv_labels_states(tmp_path):
    cases = {"tagged": (TAGGED, "labelled"), "tokens": (TOKENS, "tokens"), "allx": (ALL_X, "all-x"),
             "empty": ("\n\n", "empty"), "crlf_tokens": (TOKENS.replace("\n", "\r\n"), "tokens"),
             "x_then_tag": ("a\tX\nb\tNOUN\n", "labelled"), "nbsp_token": ("1\u00a0000\ncat\n", "tokens"),
             "space_separated": ("The DET\ncat NOUN\n", "labelled")}
    for name, (text, want) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert tsv_labels(str(tmp_path / name)) == want, name


def test_udpos_unlabelled_test_files_fall_back_to_conllu(tmp_path):
    r = tmp_path
    for lang in ("en", "zh", "te", "vi"):
        (r / f"train-{lang}.tsv").write_text(TAGGED)
    (r / "test-en.tsv").write_text(TOKENS)
    (r / "test-en.conllu").write_text(CONLLU)
    (r / "test-te.tsv").write_text(TOKENS)
    tb = r / "ud-treebanks-v2.5" / "UD_Telugu-MTG"
    tb.mkdir(parents=True)
    (tb / "te_mtg-ud-test.conllu").write_text(CONLLU)
    (r / "vi").mkdir()
    (r / "vi" / "test.bert-base-multilingual-cased").write_text(ALL_X)
    (r / "test-vi.conllu").write_text(CONLLU)
    (r / "test-zh.tsv").write_text(TAGGED)               # labelled: wins over any CoNLL-U
    (r / "test-zh.conllu").write_text(CONLLU)
    p = UDPOS(root=str(r))
    assert p.data_files("test", "en") == [str(r / "test-en.conllu")]
    assert p.data_files("test", "te") == [str(tb / "te_mtg-ud-test.conllu")]
    assert p.data_files("test", "vi") == [str(r / "test-vi.conllu")]
    assert p.data_files("test", "zh") == [str(r / "test-zh.tsv")]
    assert p.data_files("train", "en") == [str(r / "train-en.tsv")]
    assert read_pos_files(p.data_files("test", "en")) == [(["A", "dog"], ["DET", "NOUN"]), (["go"], ["VERB"])]


def test_udpos_unlabelled_without_conllu_one_line(tmp_path):
    r = tmp_path
    (r / "test-en.tsv").write_text(TOKENS)
    (r / "vi").mkdir()
    (r / "vi" / "test.bert-base-multilingual-cased").write_text(ALL_X)
    p = UDPOS(root=str(r))
    with pytest.raises(DataError) as e:
        p.data_files("test", "en")
    msg = one_line(e)
    assert msg.startswith(f"problem udpos: {r}/test-en.tsv holds tokens without tags")
    assert f"labelled CoNLL-U test files under {r} (test-en.conllu, or the release tree's en_*-ud-test.conllu)" in msg
    with pytest.raises(DataError) as e:
        p.data_files("test", "vi")
    assert one_line(e).startswith(f"problem udpos: {r}/vi/test.bert-base-multilingual-cased tags every word X")
    assert "test-vi.conllu" in str(e.value)
    # read directly (e.g. by another tool), the readers refuse them with the same advice
    with pytest.raises(DataError, match=r"test-en.tsv holds tokens without tags"):
        read_xtreme_pos(str(r / "test-en.tsv"))
    with pytest.raises(DataError, match=r"tags every word X"):
        read_pos_files([str(r / "vi" / "test.bert-base-multilingual-cased")])


def test_udpos_untagged_line_inside_a_tagged_file_names_the_line(tmp_path):
    p = tmp_path / "train-en.tsv"
    p.write_text("The\tDET\ncat\n\nRuns\tVERB\n")
    assert tsv_labels(str(p)) == "labelled"
    with pytest.raises(DataError) as e:
        read_xtreme_pos(str(p))
    assert one_line(e) == f"problem udpos: {p}:2: 'cat' has no tag; every word line is token<TAB>TAG"
