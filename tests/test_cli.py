"""The `tnstudio` command line contract: names, exit codes and JSON keys that users and scripts rely on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.design.model import load_design, save_design
from engine.design.templates import make_template

TNSTUDIO = Path(sys.executable).with_name("tnstudio")


def test_template_validate_cost_round_trip(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["template", "mera", "--in", "4096", "--out", "4096", "--bond", "4", "--activation", "gelu",
                 "-o", str(out)]) == 0
    d = load_design(out)
    assert d.params == make_template("mera", 4096, 4096, 4, activation="gelu").params
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    assert main(["cost", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["params"] == d.params and rep["dense_params"] == 4096 * 4096
    assert rep["compression"] == pytest.approx(4096 * 4096 / d.params)


def test_template_factors_and_bond_list(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["template", "mpo", "--in", "256", "--out", "64", "--bond", "2,3,4", "--in-factors", "4,4,4,4",
                 "--out-factors", "2,2,4,4", "-o", str(out)]) == 0
    d = load_design(out)
    assert [d.dim(i) for i in d.in_legs] == [4, 4, 4, 4] and [d.dim(f"r{n}") for n in range(3)] == [2, 3, 4]


@pytest.mark.parametrize("args,message", [
    (["template", "mpo", "--in", "100", "--out", "10", "--in-factors", "3,3"], "multiply to 9, not 100"),
    (["template", "blob", "--in", "10", "--out", "10"], "unknown template 'blob'"),
    (["template", "ttn", "--in", "16", "--out", "16", "--activation", "zap"], "unknown activation 'zap'"),
    (["validate", "/no/such/file.json"], "design file not found"),
])
def test_user_errors_exit_2_with_message(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_validate_lists_every_problem(tmp_path, capsys):
    d = make_template("mpo", 12, 6, 2, in_factors=[3, 4], out_factors=[3, 2]).to_dict()
    d["indices"]["r0"]["dim"] = 0
    d["tensors"][0]["activation"] = "zap"
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "dim must be an integer >= 1" in err and "unknown activation 'zap'" in err


def test_console_script_help_and_must_show_command(tmp_path):
    """The exact command from the issue, through the installed console script."""
    if not TNSTUDIO.exists():
        pytest.skip("tnstudio console script not installed in this environment")
    env = dict(os.environ)
    top = subprocess.run([str(TNSTUDIO), "--help"], capture_output=True, text=True, env=env)
    assert top.returncode == 0 and "template" in top.stdout and "cost" in top.stdout
    sub = subprocess.run([str(TNSTUDIO), "cost", "--help"], capture_output=True, text=True, env=env)
    assert "--batch" in sub.stdout
    m = tmp_path / "m.json"
    cmd = (f"{TNSTUDIO} template mera --in 4096 --out 4096 --bond 4 --activation gelu -o {m} && "
           f"{TNSTUDIO} cost {m} --json")
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    assert {"params", "dense_params", "compression"} <= set(rep)


def test_design_commands_do_not_import_torch(tmp_path):
    """template/validate/cost are pure Python (design, program, cost): they stay instant without torch."""
    m = tmp_path / "m.json"
    code = (
        "import sys, contextlib, io\n"
        "from engine.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['template', 'ttn', '--in', '256', '--out', '256', '--activation', 'gelu', '-o', r'{m}']) == 0\n"
        f"    assert main(['validate', r'{m}']) == 0\n"
        f"    assert main(['cost', r'{m}', '--json']) == 0\n"
        "assert 'torch' not in sys.modules, 'a design command imported torch'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------- bad input to analysis, search and serve
def _one_error_line(capsys, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("extra,words", [
    (["spectra", "--tol", "nan"], ["--tol must be a finite number >= 0", "nan"]),
    (["spectra", "--tol", "-1"], ["--tol must be a finite number >= 0", "-1"]),
    (["spectra", "--show", "-1"], ["--show must be", "-1"]),
    (["truncate", "--tol", "inf", "-o", "OUT"], ["--tol must be a finite number >= 0", "inf"]),
    (["features", "--samples", "0"], ["--samples must be", ">= 1", "got 0"]),
    (["features", "--samples", "-1"], ["--samples must be", "got -1"]),
])
def test_analysis_options_out_of_range_exit_2_before_loading_anything(tmp_path, capsys, extra, words):
    """The run does not exist: the option is refused before the run is looked up (which would say 'no run')."""
    extra = [str(tmp_path / "t.json") if a == "OUT" else a for a in extra]
    assert main(extra + ["--run", "nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    _one_error_line(capsys, *words)
    assert not (tmp_path / "t.json").exists()


def test_unloadable_checkpoint_is_one_line_without_unsafe_advice(tmp_path, capsys):
    import datetime

    import torch

    from engine.train.store import RunStore

    runs = tmp_path / "runs"
    store = RunStore(runs)
    rid = store.create_run({"dataset": "digits", "epochs": 1}, make_template("mpo", 64, 64, 2))
    bad = runs / rid / "checkpoint.pt"
    torch.save({"model": {}, "when": datetime.date(2020, 1, 1)}, bad)  # not loadable with weights_only=True
    store.set_status(rid, "completed", checkpoint=str(bad))
    for cmd in (["spectra"], ["features"], ["truncate", "--tol", "0.1", "-o", str(tmp_path / "t.json")]):
        assert main(cmd + ["--run", rid, "--runs-dir", str(runs)]) == 2
        line = _one_error_line(capsys, f"checkpoint {bad} is damaged", "GLOBAL datetime.date")
        assert "False" not in line and "arbitrary code" not in line and "\x1b" not in line, line
    bad.write_bytes(b"PK\x03\x04 not a zip")  # a torn file
    assert main(["spectra", "--run", rid, "--runs-dir", str(runs)]) == 2
    _one_error_line(capsys, f"checkpoint {bad} is damaged")


def _search_args(tmp_path, *extra):
    return (["search", "--in", "64", "--out", "64", "--name", "s1", "--trials", "1", "--storage",
             str(tmp_path / "s1.journal"), "--runs-dir", str(tmp_path / "runs")] + list(extra))


@pytest.mark.parametrize("extra,words", [
    (["--kinds", "ttn", "--lateral", "zz", "--legs", "3"], ["lateral must be", "'zz'"]),
    (["--kinds", "ttn", "--lateral", "none,sideways", "--legs", "3"], ["lateral must be", "'sideways'"]),
    (["--seed", "99999999999999999999999"], ["seed must be from 0 to 2^32 - 1"]),
    (["--seed", "-1"], ["seed must be from 0 to 2^32 - 1"]),
    (["--epochs", "99999999999999999999999"], ["epochs must be at most 2^31 - 1"]),
])
def test_search_refuses_bad_options_before_starting_workers(tmp_path, capsys, monkeypatch, extra, words):
    import engine.search.study as study

    monkeypatch.setattr(study, "start_workers", lambda *a, **kw: pytest.fail("workers started"))
    assert main(_search_args(tmp_path, *extra)) == 2
    _one_error_line(capsys, *words)
    assert not (tmp_path / "s1.journal").exists() and not (tmp_path / "runs").exists()


def test_search_space_keeps_good_lateral_values():
    from engine.search.space import LayerSpace, SpaceError

    space = LayerSpace(64, 64, kinds=("ttn",), options=(("lateral", ("none", "ALL", "0")),))
    assert dict(space.options)["lateral"] == ("none", "all", "0")
    with pytest.raises(SpaceError, match="unknown template option 'sideways'"):
        LayerSpace(64, 64, kinds=("ttn",), options=(("sideways", ("all",)),))


@pytest.mark.parametrize("extra,words", [
    (["--port", "-1"], ["--port must be from 0 to 65535", "-1"]),
    (["--port", "99999"], ["--port must be from 0 to 65535", "99999"]),
    (["--address", "not an address"], ["--address 'not an address'"]),
    (["--address", "999.1.1.1"], ["--address '999.1.1.1'"]),
    (["--oauth-provider", "nope", "--cookie-secret", "s3cret"], ["--oauth-provider 'nope'", "github"]),
    (["--oauth-provider", ""], ["--oauth-provider is empty"]),
    (["--basic-auth", ""], ["--basic-auth is empty", "without authentication"]),
    (["--basic-auth", "BAD", "--cookie-secret", "s3cret"], ["not a JSON file of user: password"]),
    (["--basic-auth", "LIST", "--cookie-secret", "s3cret"], ["expected a JSON object of user: password"]),
    (["--basic-auth", "MISSING", "--cookie-secret", "s3cret"], ["no such file"]),
    (["--basic-auth", "pw"], ["needs --cookie-secret"]),
    (["--basic-auth", "pw", "--oauth-provider", "github", "--cookie-secret", "s"], ["not both"]),
])
def test_serve_refuses_bad_arguments_before_a_server_starts(tmp_path, capsys, monkeypatch, extra, words):
    import studio.app

    monkeypatch.delenv("PANEL_COOKIE_SECRET", raising=False)
    monkeypatch.delenv("BOKEH_COOKIE_SECRET", raising=False)
    monkeypatch.setattr(studio.app, "serve", lambda *a, **kw: pytest.fail(f"a server was started with {kw}"))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text('["alice"]')
    files = {"BAD": tmp_path / "bad.json", "LIST": tmp_path / "list.json", "MISSING": tmp_path / "users.json"}
    assert main(["serve"] + [str(files.get(a, a)) for a in extra]) == 2
    _one_error_line(capsys, *words)


@pytest.mark.parametrize("in_the_way", ["", "runs", "search", "drafts"])
def test_serve_refuses_a_home_with_a_file_in_the_way(tmp_path, capsys, monkeypatch, in_the_way):
    """TNSTUDIO_HOME naming a file (or a file where the runs folder goes) served a studio whose tabs logged
    tracebacks; `tnstudio search` raised NotADirectoryError."""
    import studio.app

    home = tmp_path / "home"
    if in_the_way:
        home.mkdir()
    (home / in_the_way).write_text("a file")
    monkeypatch.setenv("TNSTUDIO_HOME", str(home))
    monkeypatch.setattr(studio.app, "serve", lambda *a, **kw: pytest.fail(f"a server was started with {kw}"))
    assert main(["serve", "--port", "0"]) == 2
    _one_error_line(capsys, str(home / in_the_way) if in_the_way else f"home folder {home} (TNSTUDIO_HOME)",
                    "a file is in the way of the folder")
    if in_the_way == "search":
        assert main(["search", "--in", "64", "--out", "64", "--trials", "1", "--name", "s"]) == 2
        _one_error_line(capsys, f"search folder {home / 'search'}: a file is in the way")


def test_serve_creates_the_home_it_keeps_its_files_in(tmp_path, capsys, monkeypatch):
    import studio.app

    home = tmp_path / "new" / "home"
    monkeypatch.setenv("TNSTUDIO_HOME", str(home))
    monkeypatch.setattr(studio.app, "serve", lambda **kw: None)
    assert main(["serve", "--port", "0"]) == 0
    assert all((home / sub).is_dir() for sub in ("runs", "search", "drafts"))


def test_serve_passes_good_arguments_on(tmp_path, capsys, monkeypatch):
    import studio.app

    seen = {}
    monkeypatch.setattr(studio.app, "serve", lambda **kw: seen.update(kw))
    users = tmp_path / "users.json"
    users.write_text('{"alice": "wonderland"}')
    assert main(["serve", "--port", "0", "--basic-auth", str(users), "--cookie-secret", "s3cret"]) == 0
    assert seen["basic_auth"] == str(users) and seen["cookie_secret"] == "s3cret" and seen["port"] == 0


def test_weights_that_are_not_a_regular_file_are_one_line(tmp_path, capsys):
    """A fifo given as --weights was called 'no such weights file' (it exists); torch.load would block on it."""
    design = tmp_path / "t.json"
    save_design(make_template("mpo", 64, 64, 2), design)
    fifo = tmp_path / "w.fifo"
    os.mkfifo(fifo)
    cases = [(fifo, f"{fifo} is not a regular file"), (tmp_path, f"{tmp_path} is not a regular file"),
             (tmp_path / "none.pt", "no such weights file")]
    for path, words in cases:
        for argv in (["export", str(design), "--weights", str(path), "-o", str(tmp_path / "x.py")],
                     ["spectra", str(design), "--weights", str(path)]):
            assert main(argv) == 2, argv
            _one_error_line(capsys, words)
    assert not (tmp_path / "x.py").exists()
