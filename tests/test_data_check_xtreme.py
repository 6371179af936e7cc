"""`litmus check-data` for the XTREME problems: files found and parsed by the real readers, no model needed."""


from study.cli import main


def write_pawsx(root, skip=()):
    for lang in ("en", "zh", "de", "es"):
        for split in ("train", "dev", "test"):
            if (split, lang) in skip:
                continue
            rows = "".join(f"s{i}\tt{i}\t{i % 2}\n" for i in range(3 if split == "train" else 2))
            (root / f"{split}-{lang}.tsv").write_text("sentence1\tsentence2\tlabel\n" + rows)


def test_pawsx_folder_summary(tmp_path, capsys):
    write_pawsx(tmp_path)
    assert main(["check-data", "pawsx", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "  en: train 3 / val 2 / test 2 examples" in out and "  es: train 3 / val 2 / test 2 examples" in out


def test_pawsx_missing_file_one_line_each(tmp_path, capsys):
    write_pawsx(tmp_path, skip={("dev", "zh"), ("test", "es")})
    assert main(["check-data", "pawsx", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith("litmus: error: pawsx: no val file for 'zh': looked for ")
    assert err[1].startswith("litmus: error: pawsx: no test file for 'es': looked for ")


def test_udpos_xtreme_layout(tmp_path, capsys):
    for lang in ("en", "zh", "te", "vi"):
        for split in ("train", "dev", "test"):
            (tmp_path / f"{split}-{lang}.tsv").write_text("The\tDET\ncat\tNOUN\n\nRuns\tVERB\n")
    assert main(["check-data", "udpos", str(tmp_path)]) == 0
    assert "  vi: train 2 / val 2 / test 2 examples" in capsys.readouterr().out


# -- the layouts researchers have: XTREME's folder (unlabelled test files) + the release / UD CoNLL-U --
from tests.test_problems_xtreme_files import csv_tsv as _csv_tsv  # noqa: E402  (XTREME's csv.writer files)
from tests.test_problems_xtreme_files import release_tsv as _release_tsv  # noqa: E402  (the release's files)


def write_xtreme_pawsx(root, release_tests=True):
    """train-en.tsv, translated/en-{lang}-translated.tsv (5 columns, one malformed row), dev-{lang}.tsv,
    unlabelled test-{lang}.tsv, and (optionally) the release's {lang}/test_2k.tsv."""
    _csv_tsv(root / "train-en.tsv", [[f"e{i}", f"f{i}", str(i % 2)] for i in range(4)])
    for lang in ("zh", "de", "es"):
        _csv_tsv(root / "translated" / f"en-{lang}-translated.tsv",
                 [["E1", "E2", "t1", "t2", "1"], ["E3", "E4", "t3", "t4", "0"], ["broken row"]])
    for lang in ("en", "zh", "de", "es"):
        _csv_tsv(root / f"dev-{lang}.tsv", [["a", "b", "1"], ["c", "d", "0"], ["e", "f", "1"]])
        _csv_tsv(root / f"test-{lang}.tsv", [["a", "b"], ["c", "d"]])
        if release_tests:
            _release_tsv(root / lang / "test_2k.tsv", [(1, "a", "b", 1), (2, "c", "d", 0), (3, "e", "f", 0),
                                                      (4, "g", "h", 1), (5, "i", "j", 1)])


def test_pawsx_xtreme_folder_with_release_test_sets_passes(tmp_path, capsys):
    write_xtreme_pawsx(tmp_path)
    assert main(["check-data", "pawsx", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"pawsx data at {tmp_path}"
    # malformed translated rows are skipped (2 of 3 kept); tests come from the release (5 rows)
    assert out[1:] == ["  en: train 4 / val 3 / test 5 examples", "  zh: train 2 / val 3 / test 5 examples",
                       "  de: train 2 / val 3 / test 5 examples", "  es: train 2 / val 3 / test 5 examples"]


def test_pawsx_unlabelled_tests_one_line_per_language(tmp_path, capsys):
    write_xtreme_pawsx(tmp_path, release_tests=False)
    assert main(["check-data", "pawsx", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    for line, lang in zip(err, ("en", "zh", "de", "es")):
        assert line.startswith(f"litmus: error: pawsx: {tmp_path}/test-{lang}.tsv is unlabelled")
        assert f"{tmp_path}/{lang}/test_2k.tsv (x-final/{lang}/test_2k.tsv)" in line


def test_pawsx_rejected_translation_one_line(tmp_path, capsys):
    write_xtreme_pawsx(tmp_path)
    _csv_tsv(tmp_path / "translated" / "en-de-translated.tsv", [["E1", "E2", "t1", "t2", "1"], ["x"], ["y"]])
    assert main(["check-data", "pawsx", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"litmus: error: pawsx: {tmp_path}/translated/en-de-translated.tsv: 2 of 3 rows are not")


def write_xtreme_udpos(root, conllu=True):
    tagged = "The\tDET\ncat\tNOUN\n\nRuns\tVERB\n"
    conllu_text = ("1\tA\ta\tDET\t_\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t0\troot\t_\t_\n\n"
                   "1\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\n\n1\tok\tok\tINTJ\t_\t_\t0\troot\t_\t_\n\n")
    for lang in ("en", "zh", "te", "vi"):
        for split in ("train", "dev"):
            (root / f"{split}-{lang}.tsv").write_text(tagged)
        (root / f"test-{lang}.tsv").write_text("The\ncat\n\nRuns")      # XTREME: tokens only
        if conllu:
            tb = root / "ud-treebanks-v2.5" / f"UD_{lang}-X"
            tb.mkdir(parents=True)
            (tb / f"{lang}_x-ud-test.conllu").write_text(conllu_text)


def test_udpos_tokens_only_tests_use_conllu(tmp_path, capsys):
    write_xtreme_udpos(tmp_path)
    assert main(["check-data", "udpos", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for lang in ("en", "zh", "te", "vi"):
        assert f"  {lang}: train 2 / val 2 / test 3 examples" in out


def test_udpos_tokens_only_tests_without_conllu_one_line_each(tmp_path, capsys):
    write_xtreme_udpos(tmp_path, conllu=False)
    assert main(["check-data", "udpos", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    for line, lang in zip(err, ("en", "zh", "te", "vi")):
        assert line.startswith(f"litmus: error: udpos: {tmp_path}/test-{lang}.tsv holds tokens without tags")
        assert f"test-{lang}.conllu, or the release tree's {lang}_*-ud-test.conllu" in line
