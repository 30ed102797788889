"""The package metadata, the conda environment and the command line agree."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _normalise(spec: str) -> tuple[str, str]:
    req = Requirement(spec)
    return req.name.lower().replace("_", "-"), str(req.specifier)


def _pyproject_requirements() -> set[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in ("book", "test"):
        specs += project["optional-dependencies"][extra]
    return {_normalise(s) for s in specs}


def _environment_requirements() -> set[tuple[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml must have exactly one pip section"
    return {_normalise(s) for s in pip_lists[0] if not s.startswith("-")}


def test_environment_yml_matches_pyproject():
    env, project = _environment_requirements(), _pyproject_requirements()
    assert env - project == set(), f"only in environment.yml: {sorted(env - project)}"
    assert project - env == set(), f"only in pyproject.toml: {sorted(project - env)}"


def test_environment_yml_python_is_supported():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"]


def test_console_script_help():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "metabook"), "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "usage: metabook" in out
    assert "datasets" in out


def test_module_entry_point_reports_bad_input_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "metabook", "info", "--no-such-flag"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "unrecognized arguments" in proc.stderr


def test_import_and_help_load_no_heavy_library():
    """``import metabook``, its errors and ``metabook --help`` stay quick: nothing heavy is imported."""
    script = ("import sys, metabook, metabook.errors, metabook.cli\n"
              "try:\n"
              "    metabook.cli.main(['--help'])\n"
              "except SystemExit:\n"
              "    pass\n"
              "print(sorted(m for m in ('torch', 'datasets', 'transformers', 'numpy', 'yaml')\n"
              "             if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    lazy = subprocess.run([sys.executable, "-c", "import metabook, sys; metabook.MAML; "
                           "print('torch' in sys.modules, metabook.MAML.__name__)"],
                          capture_output=True, text=True, check=True)
    assert lazy.stdout.split() == ["True", "MAML"]


def _module_imports() -> dict[str, set[str]]:
    """Each metabook module -> the metabook modules it imports when it is imported.

    Only imports that run at import time count: those at module level, outside
    functions, and not under ``if TYPE_CHECKING:``.
    """
    import ast

    package = ROOT / "metabook"
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        found: set[str] = set()

        def visit(nodes):
            for node in nodes:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                        base = ".".join(anchor + ([base] if base else []))
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names)
                elif isinstance(node, (ast.If, ast.Try, ast.With)):
                    visit(ast.iter_child_nodes(node))

        visit(ast.parse(path.read_text()).body)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycles_between_metabook_modules():
    graph = _module_imports()
    assert len(graph) > 30 and graph["metabook.pipeline"], "the import graph was not read"
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph[module]):
            walk(dep, path + [module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])


def test_import_metabook_is_light():
    code = ("import sys, metabook; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"import metabook pulled in {out.stdout.strip()}"
