"""The `tnstudio` command line contract: names, exit codes and JSON keys that users and scripts rely on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.design.model import load_design
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
