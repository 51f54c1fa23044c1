"""The package's layers: core → build → explain/serve → evaluation, checked on every import in the source
(top-level and inside functions), and on what ``make archive`` ships."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import REPO

HINT = REPO / "hint"
BUILD, EVALUATION = "hint.build", "hint.evaluation"


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative ones resolved), anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
                base = ".".join(
                    pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _files(*where: Path) -> list[Path]:
    return sorted(f for w in where for f in ([w] if w.is_file() else w.rglob("*.py")))


SERVING = [p for p in _files(HINT) if not _within(_module(p), BUILD) and not _within(_module(p), EVALUATION)]
SERVING += _files(REPO / "handlers")


@pytest.mark.parametrize("path", SERVING, ids=lambda p: str(p.relative_to(REPO)))
def test_core_explain_and_serve_import_no_build_or_evaluation(path):
    bad = sorted(n for n in imports(path) if _within(n, BUILD) or _within(n, EVALUATION))
    if path == HINT / "__init__.py":  # the public API names build_bank and BuildConfig, imported on first use
        bad = [
            n
            for n in bad
            if n
            not in {
                "hint.build.builder",
                "hint.build.config",
                "hint.build.builder.build_bank",
                "hint.build.config.BuildConfig",
            }
        ]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("path", _files(HINT / "build"), ids=lambda p: str(p.relative_to(REPO)))
def test_build_imports_no_evaluation(path):
    bad = sorted(n for n in imports(path) if _within(n, EVALUATION))
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from hint.build.pipeline import BuildConfig\n    import hint.evaluation.wsol\n"
    )
    assert {"hint.build.pipeline", "hint.evaluation.wsol"} <= imports(f)


def test_public_api():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, hint; before = sorted(m for m in sys.modules if m.startswith('hint'));"
            "from hint import BuildConfig, ConceptBank, Explainer, Hierarchy, build_bank; print(before, hint.__all__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("['hint'] ")  # importing hint loads nothing else
    for name in ("BuildConfig", "ConceptBank", "Explainer", "Hierarchy", "build_bank"):
        assert name in out.stdout


@pytest.mark.slow
def test_archive_ships_no_build_or_evaluation_code(tmp_path):
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO), "archive", f"STORE={tmp_path}", f"MAR_SRC={tmp_path / 'src'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = zipfile.ZipFile(tmp_path / "hint.mar").namelist()
    shipped = {n for n in names if n.startswith("hint/") and n.endswith(".py")}
    assert (
        "hint/explain/explainer.py" in shipped
        and "hint/serve/request.py" in shipped
        and "hint/bank.py" in shipped
    )
    assert not [n for n in shipped if n.startswith(("hint/build/", "hint/evaluation/"))]
