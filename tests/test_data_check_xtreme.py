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
