"""shared/runtime/paths.py's one data-path rule: a flag wins, then an environment variable, then the
first usable default; the errors name the flag, the variable and the path."""
import os
import sys

import pytest

from shared.runtime.paths import DataDirError, file_check, missing_files, resolve_data_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def files(tmp_path):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("x\n")
    return tmp_path


def resolve(value, defaults=(), **kw):
    return resolve_data_path(value, "JLA_TEST_DATA", defaults, flag="--data", what="test data",
                             **kw)


def test_flag_then_variable_then_first_usable_default(files, monkeypatch):
    a, b, c = (str(files / n) for n in ("a.txt", "b.txt", "c.txt"))
    monkeypatch.setenv("JLA_TEST_DATA", b)
    assert resolve(a, [c], check=file_check) == a
    assert resolve(None, [c], check=file_check) == b
    monkeypatch.setenv("JLA_TEST_DATA", "")  # empty counts as unset
    assert resolve(None, [str(files / "no.txt"), c], check=file_check) == c
    assert resolve(None, [str(files / "no.txt")]) == str(files / "no.txt")  # no check: taken


def test_a_named_path_that_fails_its_check_is_an_error_naming_its_source(files, monkeypatch):
    c = str(files / "c.txt")
    with pytest.raises(DataDirError, match=r"^test data .*no\.txt \(from --data\): file not found$"):
        resolve(str(files / "no.txt"), [c], check=file_check)
    monkeypatch.setenv("JLA_TEST_DATA", str(files / "gone.txt"))
    with pytest.raises(DataDirError, match=r"gone\.txt \(from JLA_TEST_DATA\): file not found"):
        resolve(None, [c], check=file_check)  # never silently the default instead
    assert resolve(None, [c], check=file_check, check_given=False) == str(files / "gone.txt")


def test_nothing_found_names_the_flag_the_variable_and_the_defaults(files, monkeypatch):
    monkeypatch.delenv("JLA_TEST_DATA", raising=False)
    with pytest.raises(DataDirError) as err:
        resolve(None, [str(files / "no.txt")], check=file_check, how="run get_data.sh")
    assert str(err.value) == (f"test data not found: give --data or set JLA_TEST_DATA (default "
                              f"{files / 'no.txt'}: file not found); run get_data.sh")
    with pytest.raises(DataDirError, match=r"^test data not found: give --data or set JLA_TEST_DATA$"):
        resolve(None)
    assert resolve(None, [str(files / "no.txt")], check=file_check, required=False) is None


def test_many_paths_from_the_flag_or_the_variable(files, monkeypatch):
    a, b, c = (str(files / n) for n in ("a.txt", "b.txt", "c.txt"))
    monkeypatch.setenv("JLA_TEST_DATA", os.pathsep.join([b, "", c]))
    assert resolve([a], [[c]], many=True) == [a]
    assert resolve(None, [[a]], many=True) == [b, c]
    monkeypatch.delenv("JLA_TEST_DATA")
    assert resolve([], [[a, b]], many=True) == [a, b]
    monkeypatch.setenv("JLA_TEST_DATA", os.pathsep.join([b, str(files / "no.txt")]))
    with pytest.raises(DataDirError, match=r"no\.txt \(from JLA_TEST_DATA\): file not found"):
        resolve(None, many=True, check=file_check)


def test_missing_files_check(files):
    assert missing_files(["a.txt", "b.txt"])(str(files)) is None
    assert missing_files(["a.txt", "x.txt", "y.txt"])(str(files)) == "lacks x.txt, y.txt"
    assert missing_files(["a.txt"])(str(files / "sub")) == "folder not found"


def test_task_flags_keep_their_rule_and_name_flag_and_variable(files, monkeypatch):
    from shared.tasks.classify_task import build_classify_parser, classify_problems
    from shared.tasks.pretrain_task import build_pretrain_parser, pretrain_problems
    monkeypatch.delenv("SMS_SPAM_DATA", raising=False)
    monkeypatch.delenv("TEXT_DATA", raising=False)
    args = build_classify_parser().parse_args(["--backend", "torch", "--work_dir", str(files)])
    assert any("give --data or set SMS_SPAM_DATA" in p for p in classify_problems(args))
    monkeypatch.setenv("SMS_SPAM_DATA", str(files / "no.txt"))
    args = build_classify_parser().parse_args(["--backend", "torch", "--work_dir", str(files)])
    assert any("no.txt (from SMS_SPAM_DATA): file not found" in p for p in classify_problems(args))
    monkeypatch.setenv("SMS_SPAM_DATA", str(files / "a.txt"))
    args = build_classify_parser().parse_args(["--backend", "torch", "--work_dir", str(files)])
    classify_problems(args)
    assert args.data == str(files / "a.txt")  # the run records where its data came from

    args = build_pretrain_parser().parse_args(["--backend", "torch", "--work_dir", str(files)])
    assert any("give --text FILE [FILE ...] or set TEXT_DATA" in p for p in pretrain_problems(args))
    monkeypatch.setenv("TEXT_DATA", os.pathsep.join([str(files / "a.txt"), str(files / "b.txt")]))
    args = build_pretrain_parser().parse_args(["--backend", "torch", "--work_dir", str(files)])
    pretrain_problems(args)
    assert args.text == [str(files / "a.txt"), str(files / "b.txt")]


def test_instruct_ft_without_data_is_a_usage_error_naming_flag_and_variable(monkeypatch, capsys):
    monkeypatch.delenv("INSTRUCT_DATA", raising=False)
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import instruct_ft
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as exit_:
        instruct_ft.main(["--backend", "torch", "--work_dir", "unused"])
    assert exit_.value.code == 2
    assert "give --data or set INSTRUCT_DATA" in capsys.readouterr().err


def test_pipelines_take_flag_then_variable_then_the_shared_data_folder(files, monkeypatch):
    from shared.pipeline.instruct_pipeline import DEFAULT_DATA, resolve_data
    from shared.pipeline.task_pipelines import (REPO_ROOT, SMS_SPAM, VERDICT, ClassifyPipeline,
                                                PretrainPipeline)
    from types import SimpleNamespace
    monkeypatch.delenv("TEXT_DATA", raising=False)
    monkeypatch.delenv("SMS_SPAM_DATA", raising=False)
    pretrain, classify = object.__new__(PretrainPipeline), object.__new__(ClassifyPipeline)
    pretrain.args, classify.args = SimpleNamespace(text=None), SimpleNamespace(data=None)
    assert pretrain.data_files() == [os.path.abspath(os.path.join(REPO_ROOT, VERDICT))]
    assert classify.data_files() == [os.path.abspath(os.path.join(REPO_ROOT, SMS_SPAM))]
    monkeypatch.setenv("TEXT_DATA", str(files / "b.txt"))
    monkeypatch.setenv("SMS_SPAM_DATA", str(files / "b.txt"))
    assert pretrain.data_files() == classify.data_files() == [str(files / "b.txt")]
    pretrain.args, classify.args = SimpleNamespace(text=[str(files / "a.txt")]), SimpleNamespace(
        data=str(files / "a.txt"))
    assert pretrain.data_files() == classify.data_files() == [str(files / "a.txt")]

    monkeypatch.setenv("INSTRUCT_DATA", str(files / "b.txt"))
    assert resolve_data(str(files / "a.txt")) == str(files / "a.txt")
    assert resolve_data(None) == str(files / "b.txt")
    monkeypatch.delenv("INSTRUCT_DATA")
    monkeypatch.setattr("shared.pipeline.instruct_pipeline.DEFAULT_DATA", str(files / "none.json"))
    with pytest.raises(FileNotFoundError, match=r"give --data or set INSTRUCT_DATA \(default "
                       r".*none\.json: file not found\)"):
        resolve_data(None)
    assert DEFAULT_DATA.endswith("instruction-data.json")


def test_repo_root_is_the_checkout():
    """The default data folders and the pipeline's scripts hang off REPO_ROOT: it must be the
    checkout (where setup.py and scripts/ are), wherever shared/ nests the module."""
    from shared.pipeline import engine
    from shared.runtime import paths
    assert os.path.isfile(os.path.join(paths.REPO_ROOT, "setup.py"))
    assert os.path.isfile(os.path.join(engine.ROOT, "scripts", "gpt2_ft.py"))
