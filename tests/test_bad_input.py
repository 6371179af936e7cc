"""Bad input: one exact line on stderr, exit status 2, nothing started, nothing written."""

from __future__ import annotations

import textwrap

import pytest

from study import driver
from study.cli import main

GOOD = """\
name: s
problem: {name: multidigits, n_train: 64, n_val: 32, n_test: 32}
methods: [ew, rlw]
seeds: [0]
train: {epochs: 1}
"""

# (spec text or a replacement for GOOD's lines, expected stderr line)
CASES = [
    ("unknown problem", GOOD.replace("name: multidigits", "name: multidigit"),
     "problem.name: unknown problem 'multidigit' (did you mean 'multidigits'?); valid: "),
    ("unknown architecture", GOOD + "architecture: hsp\n",
     "architecture.name: unknown architecture 'hsp' (did you mean 'hps'?); valid: "),
    ("unknown method", GOOD.replace("[ew, rlw]", "[ew, rlx]"),
     "methods[1]: unknown method 'rlx' (did you mean 'rlw'?); valid: "),
    ("unknown distribution", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: gauss}]"),
     "methods[1].distribution: unknown distribution 'gauss'; valid: "),
    ("dirichlet alpha <= 0", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: dirichlet, alpha: 0}]"),
     "methods[1]: alpha must be > 0, got 0"),
    ("normal sigma <= 0", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: normal, sigma: -1}]"),
     "methods[1]: sigma must be > 0, got -1"),
    ("unknown method parameter", GOOD.replace("[ew, rlw]", "[ew, {name: uw, init: 1}]"),
     "methods[1]: unknown parameter 'init' for 'uw'; valid: init_log_var"),
    ("empty method grid", GOOD.replace("[ew, rlw]", "[]"),
     "methods: the grid is empty; list at least one method, e.g. [ew, rlw]"),
    ("missing methods", GOOD.replace("methods: [ew, rlw]\n", ""),
     "methods: missing; list the weighting methods to compare, e.g. [ew, rlw]"),
    ("duplicate method", GOOD.replace("[ew, rlw]", "[ew, EW]"),
     "methods[1]: duplicate method 'EW' (same as methods[0]); give one a distinct 'label'"),
    ("seed not an integer", GOOD.replace("seeds: [0]", "seeds: [0, 1.5]"),
     "seeds[1]: seeds are non-negative integers, got 1.5"),
    ("seed a string", GOOD.replace("seeds: [0]", "seeds: [a]"),
     "seeds[0]: seeds are non-negative integers, got 'a'"),
    ("zero epochs", GOOD.replace("epochs: 1", "epochs: 0"), "train.epochs: must be >= 1, got 0"),
    ("epochs wrong type", GOOD.replace("epochs: 1", "epochs: ten"), "train.epochs: expected an integer, got 'ten'"),
    ("lr written as YAML reads a string", GOOD.replace("epochs: 1", "epochs: 1, lr: 1e-3"),
     "train.lr: YAML reads 1e-3 as a string, not a number; write it with a decimal point, e.g. 1.0e-3"),
    ("fp16 autocast", GOOD.replace("epochs: 1", "epochs: 1, amp: fp16"),
     "train.amp: fp16 autocast needs loss scaling, which would change the losses and gradients that "
     "weighting methods see; use amp: bf16"),
    ("cuda without a GPU per trial", GOOD.replace("epochs: 1", "epochs: 1, device: cuda"),
     "train.device: cuda needs a GPU for each trial, but resources.gpu is 0 for problem 'multidigits': set "
     "resources.gpu (e.g. 1, or 0.5 to share a GPU) or device: auto"),
    ("negative lr", GOOD.replace("epochs: 1", "epochs: 1, lr: -0.1"), "train.lr: must be > 0, got -0.1"),
    ("unknown train key", GOOD.replace("epochs: 1", "epoch: 1"),
     "train.epoch: unknown training setting; valid: "),
    ("unknown optimizer", GOOD.replace("epochs: 1", "epochs: 1, optimizer: adagrad"),
     "train.optimizer: unknown optimizer 'adagrad'; valid: adam, adamw, sgd"),
    ("unknown top-level key", GOOD + "seed: [1]\n", "seed: unknown key (did you mean 'seeds'?); valid: "),
    ("problem parameter out of range", GOOD.replace("n_train: 64", "n_train: 0"),
     "problem: n_train must be a positive integer, got 0"),
    ("unknown problem parameter", GOOD.replace("n_train: 64", "root: /data"),
     "problem: unknown parameter 'root' for 'multidigits'; valid: n_train, n_val, n_test, split_seed, width"),
    ("negative gpu", GOOD + "resources: {gpu: -1}\n", "resources.gpu: must be >= 0, got -1"),
    ("yaml syntax error", "name: s\nmethods: [ew, rlw\nseeds: [0]\n",
     "{spec}:3: YAML syntax error: expected ',' or ']', but got ':'"),
    ("not a mapping", "- ew\n- rlw\n", "{spec}: a study spec is a YAML mapping (key: value), got list"),
    ("both problem and problems", GOOD + "problems: [multidigits]\n",
     "problems: give either 'problem' or 'problems', not both"),
    ("empty problem grid", GOOD.replace("problem: {name: multidigits, n_train: 64, n_val: 32, n_test: 32}",
                                        "problems: []"), "problems: the grid is empty; list at least one entry"),
    ("bad study name", GOOD.replace("name: s", "name: a/b"),
     "name: a study name is a non-empty word without slashes or spaces, got 'a/b'"),
    ("bad method entry type", GOOD.replace("[ew, rlw]", "[ew, 3]"),
     "methods[1]: a method is a name or a mapping, got int 3"),
    ("bernoulli p = 0", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: bernoulli, p: 0}]"),
     "methods[1]: p must be > 0, got 0"),
    ("bernoulli p > 1", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: bernoulli, p: 1.5}]"),
     "methods[1]: p must be in (0, 1], got 1.5"),
    ("constrained bernoulli k > T", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: constrained_bernoulli, k: 3}]"),
     "methods[1]: k must be an integer in [1, 2], got 3"),
    ("constrained bernoulli k = 0", GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: constrained_bernoulli, k: 0}]"),
     "methods[1]: k must be an integer in [1, 2], got 0"),
    ("representation-level method without a shared representation",
     GOOD.replace("[ew, rlw]", "[ew, {name: rgw, level: representation}]") + "architecture: mtan\n",
     "methods[1]: rgw at level 'representation' needs an architecture with one shared representation; "
     "'mtan' has none (use level: parameters)"),
    ("representation-level method on a multi-input problem",
     "name: s\nproblem: {name: office31, root: /nonexistent}\nmethods: [ew, rotograd]\nseeds: [0]\n",
     "methods[1]: rotograd at level 'representation' needs one input batch shared by all tasks; problem "
     "'office31' is multi-input (each task its own batch): leave it out"),
    ("representation-level variant on a multi-input problem",
     "name: s\nproblem: {name: office31, root: /nonexistent}\nmethods: [ew, mgda_ub]\nseeds: [0]\n",
     "methods[1]: mgda at level 'representation' needs one input batch shared by all tasks; problem "
     "'office31' is multi-input (each task its own batch): use level: parameters"),
    ("complete method combined with an aggregator",
     GOOD.replace("[ew, rlw]", "[ew, {weighting: stl, aggregator: cagrad}]"),
     "methods[1]: stl is a complete method with its own gradient step and cannot be combined with the "
     "gradient method cagrad; use it alone"),
    ("gradient method parameter out of range", GOOD.replace("[ew, rlw]", "[ew, {name: cagrad, c: -1}]"),
     "methods[1]: c must be >= 0, got -1"),
    ("gradient-method options that contradict each other (MGDA-UB is MGDA at the representation)",
     GOOD.replace("[ew, rlw]", "[ew, {name: mgda_ub, level: parameters}]"),
     "methods[1]: mgda_ub is mgda with level: representation, which contradicts level: parameters; drop level "
     "or use {{name: mgda, level: parameters}}"),
    ("hybrid IMTL forced to the parameters", GOOD.replace("[ew, rlw]", "[ew, {name: imtl, level: parameters}]"),
     "methods[1]: imtl is imtl_g with level: representation, which contradicts level: parameters; drop level "
     "or use {{name: imtl_g, level: parameters}}"),
    ("tuned range low >= high", GOOD + "tune: {space: {train.lr: {type: float, low: 0.1, high: 0.01}}}\n",
     "tune.space.train.lr: low must be < high, got low=0.1, high=0.01"),
    ("log range not positive", GOOD + "tune: {space: {train.lr: {type: float, low: 0, high: 0.1, log: true}}}\n",
     "tune.space.train.lr.low: a log range needs low > 0, got 0"),
    ("quantised log bounds not multiples of the step",
     GOOD + "tune: {space: {train.lr: {type: float, low: 0.0003, high: 0.0103, log: true, step: 0.001}}}\n",
     "tune.space.train.lr.low: a quantised log range needs bounds that are multiples of step 0.001, got low=0.0003"),
    ("step does not divide the range",
     GOOD + "tune: {space: {train.batch_size: {type: int, low: 8, high: 64, step: 10}}}\n",
     "tune.space.train.batch_size.step: step 10 does not divide the range 8..64"),
    ("conditional key that does not exist",
     GOOD + "tune: {space: {train.lr: {type: float, low: 0.001, high: 0.1, when: {distrib: dirichlet}}}}\n",
     "tune.space.train.lr.when.distrib: unknown condition; valid: method, weighting, aggregator, distribution, "
     "architecture, problem"),
    ("condition that matches no cell",
     GOOD + "tune: {space: {method.alpha: {type: float, low: 0.1, high: 2, when: {distribution: dirichlet}}}}\n",
     "tune.space.method.alpha.when: matches no cell of the grid, so it would never be tuned"),
    ("tuned parameter the method rejects",
     GOOD.replace("[ew, rlw]", "[ew, {name: rlw, distribution: dirichlet}]")
     + "tune: {space: {method.alpha: {type: float, low: -1, high: 2, when: {distribution: dirichlet}}}}\n",
     "tune.space.method.alpha: alpha must be > 0, got -1.0"),
    ("bad scheduler setting", GOOD + "scheduler: {name: asha, grace_period: 0}\n",
     "scheduler.grace_period: expected a positive number, got 0"),
    ("data path that does not exist", GOOD.replace("{name: multidigits, n_train: 64, n_val: 32, n_test: 32}",
                                                    "{name: nyuv2, root: /nonexistent/nyuv2}"),
     "nyuv2: data folder /nonexistent/nyuv2 does not exist; expected root/{{train,val}}/{{image,label,depth,normal}}/{{i}}.npy (the preprocessed nyuv2 release)"),
]


@pytest.fixture
def no_ray(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("Ray must not start on bad input")

    monkeypatch.setattr(driver, "init_ray", boom)


@pytest.mark.parametrize("case, text, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_one_line_exit_2_nothing_started(case, text, expected, tmp_path, capsys, no_ray):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    storage = tmp_path / "store"
    code = main(["run", str(spec), "--storage", str(storage)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("litmus: error: ")
    line = err[len("litmus: error: "):]
    expected = expected.format(spec=spec)
    if expected.endswith("valid: "):  # the exact line up to the list of valid names, then a sorted list
        assert line.startswith(expected), err
        names = line[len(expected):].split(", ")
        assert len(names) >= 2 and names == sorted(names), err
    else:
        assert line == expected, err
    assert not storage.exists()


def test_data_folder_in_the_wrong_format(tmp_path, capsys, no_ray):
    (tmp_path / "celeba").mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD.replace("{name: multidigits, n_train: 64, n_val: 32, n_test: 32}",
                                 f"{{name: celeba, root: {tmp_path / 'celeba'}}}"))
    assert main(["run", str(spec), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"litmus: error: celeba: {tmp_path / 'celeba'}/Anno/list_attr_celeba.txt is missing; expected "
                   "Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt and Img/img_align_celeba/ (jpg) or "
                   "Img/img_align_celeba_png/ under it")
    assert not (tmp_path / "store").exists()


def test_architecture_not_applicable_to_the_problem(tmp_path, capsys, no_ray):
    for lang in ("en", "zh", "de", "es"):
        for split in ("train", "dev", "test"):
            (tmp_path / f"{split}-{lang}.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\t1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"problem: {{name: pawsx, root: {tmp_path}}}\nmethods: [ew]\narchitecture: mtan\n")
    assert main(["run", str(spec), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("litmus: error: architecture: architecture 'mtan' does not apply to problem 'pawsx': it attends "
                   "to the outputs of the stages of a staged encoder (encoder kinds cnn, resnet); the problem's "
                   "encoder is of kind 'transformer'")
    assert not (tmp_path / "store").exists()


def test_analyze_a_path_with_no_study(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"litmus: error: no study found at {tmp_path}: expected {tmp_path}/study.json or subfolders "
                   "with a study.json")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_analyze_with_an_absent_reference(tmp_path, capsys):
    from analysis.synthetic import write_study

    study = write_study(tmp_path, "s")
    assert main(["analyze", str(study), "--reference", "GradNorm", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("litmus: error: --reference 'GradNorm': no such method in the results; methods: EW, RLW, "
                   "RLW-dirichlet(alpha=1), UW")
    assert not (tmp_path / "r").exists()


def test_cluster_yaml_with_a_misspelt_key(tmp_path, capsys):
    from pathlib import Path

    good = (Path(__file__).resolve().parents[1] / "cluster.yaml").read_text()
    bad = tmp_path / "cluster.yaml"
    bad.write_text(good.replace("max_workers:", "max_worker:", 1))
    assert main(["check-cluster", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "litmus: error: max_worker: unknown key; did you mean 'max_workers'?"


def test_yaml_error_names_the_line(tmp_path, capsys, no_ray):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: s
        problem: multidigits
        methods: [ew, rlw
        seeds: [0]
        """))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:4: YAML syntax error" in err


def test_missing_spec_file(tmp_path, capsys, no_ray):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def existing_study(tmp_path, status: str):
    """GOOD's spec file and a study folder of the same spec, marked ``status``."""
    from study.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD)
    study = tmp_path / "store" / "s"
    study.mkdir(parents=True, exist_ok=True)
    h = load_spec(spec).spec_hash
    (study / "study.json").write_text(f'{{"name": "s", "spec_hash": "{h}", "status": "{status}"}}')
    return spec, study


def test_existing_study_is_refused_and_kept(tmp_path, capsys, no_ray):
    spec, study = existing_study(tmp_path, "finished")
    (study / "keep.txt").write_text("results")
    assert main(["run", str(spec), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "study 's' already exists" in err and "--resume" in err and "--name NEW" in err
    assert (study / "keep.txt").read_text() == "results"
    # a different spec under the same name is refused even with --resume
    spec.write_text(GOOD.replace("seeds: [0]", "seeds: [0, 1]"))
    assert main(["run", str(spec), "--storage", str(tmp_path / "store"), "--resume"]) == 2
    assert "was run from a different spec" in capsys.readouterr().err


def test_resume_with_nothing_to_resume(tmp_path, capsys, no_ray):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD)
    assert main(["run", str(spec), "--storage", str(tmp_path / "store"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_analyze_a_study_with_a_truncated_part_says_how_to_repair(tmp_path, capsys):
    from pathlib import Path

    from analysis.synthetic import write_study

    study = Path(write_study(tmp_path, "s"))
    part = sorted((study / "results").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    assert main(["analyze", str(study), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"litmus: error: cannot read {study}/results: ") and len(err.splitlines()) == 1
    assert f"'{part}'" in err and "Parquet magic bytes not found" in err
    assert err.endswith("a part file cut short is rebuilt from the study's journal by `litmus run SPEC --storage ... "
                        "--resume`")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, expected", [
    (["--num-cpus", "0"], "litmus: error: --num-cpus must be >= 1 (CPUs of the local Ray), got 0"),
    (["--address", "127.0.0.1:1"], "litmus: error: cannot reach a Ray cluster at --address 127.0.0.1:1 "
                                   "(Connection refused); start one there (`ray start --head`), or leave "
                                   "--address out for a local Ray"),
    (["--retry-errored"], "litmus: error: --retry-errored restarts the errored trials of an existing study: "
                          "use it with --resume"),
])
def test_bad_run_options_one_line_nothing_started(args, expected, tmp_path, capsys, no_ray):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD)
    assert main(["run", str(spec), "--storage", str(tmp_path / "store"), *args]) == 2
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "store").exists()


def test_a_finished_study_is_not_offered_resume(tmp_path, capsys, no_ray):
    for state, hint in (("finished", "pass --name NEW to start another"), ("interrupted", "pass --resume to continue it")):
        spec, _ = existing_study(tmp_path, state)
        assert main(["run", str(spec), "--storage", str(tmp_path / "store")]) == 2
        assert hint in capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--seed", "-1"], "litmus: error: --seed must be a non-negative integer, got -1"),
    (["--epochs", "0"], "litmus: error: --epochs must be >= 1, got 0"),
])
def test_bad_train_options_one_line(args, expected, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD)
    assert main(["train", str(spec), *args]) == 2
    assert capsys.readouterr().err.strip() == expected


def test_litmus_train_uses_the_trials_thread_count(tmp_path, monkeypatch):
    """Ray gives a trial OMP_NUM_THREADS = its CPUs; `litmus train` matches it, so the numbers agree."""
    import torch

    from study import training

    seen = {}
    monkeypatch.setattr(training, "train_trial", lambda cfg, rep: seen.update(threads=torch.get_num_threads(),
                                                                              epochs=cfg["train"]["epochs"]))
    before = torch.get_num_threads()
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text(GOOD + "resources: {cpu: 1}\n")
        assert main(["train", str(spec), "--epochs", "3"]) == 0
        assert seen == {"threads": 1, "epochs": 3}
    finally:
        torch.set_num_threads(before)
