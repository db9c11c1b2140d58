"""Packaging and layering: the engine's layers import only downwards, the engine never imports the studio, and a
wheel installed into a fresh virtual environment (no source tree) carries its presets and JSON Schema."""
from __future__ import annotations

import ast
import os
import pkgutil
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[1]
# a layer may import itself and the layers listed before it (engine.types / home / format / assets: any layer)
LAYERS = ["design", "contract", "nn", "network", "train", "analysis", "search", "cli"]
SHARED = {"engine", "engine.types", "engine.home", "engine.format", "engine.files", "engine.assets", "engine.resources"}


def _engine_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if not m.name.endswith("__main__"))


# imported only inside ``try: ... except ImportError`` with a fallback, so not required
OPTIONAL_IMPORTS = {"pygments": "studio/export_view.py colours code when it is there, else shows it plain"}


def _third_party_imports(*folders: str) -> dict[str, set[str]]:
    """Top-level module -> the files of ``folders`` that import it (absolute imports, not the stdlib, not the
    project's own modules)."""
    own = {"engine", "studio", "tests", "benchmarks", "__future__"} | {
        p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).glob("*.py")}
    found: dict[str, set[str]] = {}
    for path in sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in own:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_package_the_code_imports_is_a_declared_dependency():
    """pandas, param, tornado, scipy, sqlalchemy and threadpoolctl were imported but not declared: they came with
    panel, bokeh, scikit-learn or optuna, so a release of one of those that dropped them (or a pandas 4 that drops
    what bokeh's tables call) would have broken the studio with nothing in pyproject.toml to say so."""
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dists = packages_distributions()

    def missing(imports: dict[str, set[str]], deps: list[str]) -> dict[str, list[str]]:
        declared = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
        return {module: sorted(files) for module, files in imports.items()
                if not {d.lower().replace("_", "-") for d in dists.get(module, [module])} & declared
                and module not in OPTIONAL_IMPORTS}

    code = _third_party_imports("engine", "studio")
    assert {"torch", "panel", "pandas", "param"} <= set(code)  # the scan sees the code
    assert not (gaps := missing(code, project["dependencies"])), f"imported but not in the dependencies: {gaps}"
    rest = _third_party_imports("tests", "benchmarks", "examples")
    assert {"pytest", "hypothesis", "playwright"} <= set(rest)
    gaps = missing(rest, project["dependencies"] + project["optional-dependencies"]["test"])
    assert not gaps, f"imported by tests, benchmarks or examples, declared nowhere: {gaps}"


def test_every_broad_except_logs_its_reason():
    """``except Exception`` (or a bare except) anywhere in engine/ and studio/ logs what it caught, so no failure is
    swallowed without a trace (the rule of CONTRIBUTING.md)."""
    import re

    silent = []
    for path in sorted([*(ROOT / "engine").rglob("*.py"), *(ROOT / "studio").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and (node.type is None or (isinstance(node.type, ast.Name)
                                                                              and node.type.id == "Exception")):
                body = ast.unparse(node)
                if not re.search(r"\blog\.(exception|warning|error|info|debug)\(|\braise\b", body):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert silent == [], silent


def test_importing_every_engine_module_imports_no_studio_module():
    code = ("import importlib, sys\n"
            f"for name in {_engine_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "import engine, engine.cli\n"
            "bad = sorted(m for m in sys.modules if m == 'studio' or m.startswith('studio.'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "engine" and parts[1] in LAYERS else None


def test_lower_layers_never_import_higher_ones():
    problems = []
    for path in (ROOT / "engine").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        me = _layer(".".join(rel.parts))
        if me is None:
            if ".".join(rel.parts).removesuffix(".__init__") in SHARED:
                me = "design"  # shared modules sit below every layer
            else:
                continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] == "studio":
                    problems.append(f"{rel} imports {name}")
                other = _layer(name)
                if other is not None and LAYERS.index(other) > LAYERS.index(me):
                    problems.append(f"{rel} ({me}) imports {name} ({other})")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_with_presets_and_schema(tmp_path):
    """Build a wheel, install it (no dependencies fetched: they come from this venv's site-packages through a
    path entry, never the source tree) and use it from an unrelated folder."""
    wheels, src = tmp_path / "wheels", tmp_path / "src"
    # build from a copy of the tracked and new files (never the checkout's build/ folder, which can hold stale code)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("tnstudio-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                        str(wheel)], capture_output=True, text=True)
    if r.returncode != 0 and "no such option: --python" in r.stderr:  # pragma: no cover - older pip
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                            purelib, str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    # a plain path entry: the dependencies become importable, but this venv's editable-install hook (a .pth file
    # that maps `engine` to the source tree) is not processed there
    (Path(purelib) / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TNSTUDIO_HOME"] = str(tmp_path / "home")
    code = ("import json, engine\n"
            "from pathlib import Path\n"
            "from engine.assets import asset\n"
            "from engine.design.library import presets, open_design\n"
            f"assert Path(engine.__file__).is_relative_to({purelib!r}), engine.__file__\n"
            "names = presets()\n"
            "assert len(names) >= 28, names\n"
            "d = open_design(names['vgg16_fc7_mpo'])\n"
            "schema = json.loads(asset('design.schema.json').read_text())\n"
            "assert schema['properties']['format']['const'] == 'tnstudio-design'\n"
            "print(len(names), d.params)\n")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    count, params = r.stdout.split()
    assert int(count) >= 28 and int(params) == 2432  # MPO-Net's VGG-16 fc7 figure
    script = env_dir / "bin" / "tnstudio"
    preset = subprocess.run([str(py), "-c", "from engine.design.library import presets; "
                             "print(presets()['alexnet_fc6_ttn'])"], capture_output=True, text=True, cwd=work,
                            env=env).stdout.strip()
    r = subprocess.run([str(script), "validate", preset], capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = subprocess.run([str(script), "template", "ttn", "--in", "64", "--out", "64", "-o", "t.json"],
                       capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(script), "validate", "t.json"], capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
