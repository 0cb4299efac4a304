"""The floors stay floors: the import graph of the installed packages has no cycle and no upward or
sideways import (docs/architecture.md). Imports inside functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("fedsim", "fedsim.clients", "fedsim.server", "fedsim.attacks", "fedsim.defenses")
ROLES = ("fedsim.clients", "fedsim.server", "fedsim.attacks", "fedsim.defenses")
ROLE_MAY_USE = {"fedsim.clients": {"fedsim.defenses"}}  # a client applies defenses; nothing else crosses
TOP = {"fedsim.__main__", "fedsim.cli", "fedsim.runner", "fedsim.engine", "fedsim.cluster_jobs", "fedsim.sweep",
       "fedsim.sweep_figure", "fedsim.report", "fedsim.figures", "fedsim.loading", "fedsim.checks", "fedsim.plugins",
       "fedsim.settings.federated", "fedsim.settings.data_lake", "fedsim.settings.split_inference",
       "fedsim.defense_copies", "fedsim.resume"}
BARE = ("clients", "server", "attacks", "defenses")  # the folders' names, which are not import names


def modules() -> dict[str, Path]:
    """Every module of the installed packages (wherever package-dir puts them), by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if not any(name.startswith(other + ".") or name == other for other in PACKAGES if other != package
                       and other.startswith(package + ".")):
                found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Internal modules `name` imports, at any depth of the file; bare role-folder names are kept as-is."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in BARE:
                out.add(target)
            elif target.split(".")[0] == "fedsim":
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                out.add(target)
    out.discard(name)
    return out


def floor(name: str) -> str:
    if name in TOP:
        return "top"
    return next((role for role in ROLES if name == role or name.startswith(role + ".")), "ground")


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_the_packages_are_where_the_layout_says():
    found = modules()
    assert "fedsim.attacks.membership.family" in found and "fedsim.clients.app" in found
    assert found["fedsim.defenses.base"].parent.name == "defenses"  # the user's folder, installed as fedsim.defenses
    assert len(found) > 60


def test_every_package_folder_is_listed_for_installation():
    """A sub-package missing from pyproject's `packages` imports here but not once installed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"fedsim": "fedsim", "clients": "fedsim.clients", "server": "fedsim.server", "attacks": "fedsim.attacks",
               "defenses": "fedsim.defenses"}
    found = set()
    for folder, package in folders.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *parts)))
    assert found == listed, sorted(found ^ listed)


def test_no_forbidden_import():
    problems = []
    for name, targets in graph().items():
        for target in targets:
            if target.split(".")[0] in BARE:
                problems.append(f"{name} imports '{target}': use the fedsim. namespace")
                continue
            a, b = floor(name), floor(target)
            if a == "ground" and b != "ground":
                problems.append(f"{name} (ground floor) imports {target} ({b})")
            elif a != "top" and a != "ground" and b == "top":
                problems.append(f"{name} ({a}) imports {target} (top floor)")
            elif a not in ("top", "ground") and b not in ("ground", a) and b not in ROLE_MAY_USE.get(a, ()):
                problems.append(f"{name} ({a}) imports {target} ({b}): roles meet through the ground floor")
    assert not problems, "\n".join(sorted(problems))


def test_no_import_cycle():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The graph is read from the files themselves: a ground module importing a role is caught."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from fedsim.attacks.base import Attack\n    import server.app\n")
    found = imports("fedsim.bad", path, set(modules()))
    assert found == {"fedsim.attacks.base", "server.app"}
    assert floor("fedsim.bad") == "ground" and floor("fedsim.attacks.base") == "fedsim.attacks"


def test_listing_and_validating_import_no_heavy_library():
    """`fedsim list` and `fedsim validate` stay quick: no torch, MONAI, Opacus, Flower, Ray or scikit-learn."""
    code = ("import sys\nfrom fedsim.cli import main\n"
            "for argv in (['list'], ['validate', *sys.argv[1:]]):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'opacus', 'flwr', 'ray', "
            "'sklearn', 'matplotlib'})\n"
            "print('HEAVY', heavy)\n")
    scenarios = sorted(str(p) for p in (REPO / "scenarios").glob("*.yaml"))
    proc = subprocess.run([sys.executable, "-c", code, *scenarios], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout.splitlines()[-1]


def test_every_third_party_import_is_a_declared_dependency():
    """A plain `pip install .` must bring everything the packages import, at any depth (CI also
    installs into a fresh environment: `make package-check`)."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=~!; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    dist_of = {"yaml": "pyyaml", "sklearn": "scikit-learn", "flwr": "flwr", "PIL": "pillow"}
    missing = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "fedsim":
                    continue
                if dist_of.get(top, top).lower().replace("_", "-") not in declared:
                    missing.add(f"{top} ({path.name})")
    assert not missing, f"imported but not in pyproject's dependencies: {sorted(missing)}"
