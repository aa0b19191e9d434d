"""Dependencies run one way (docs/architecture.md): a module imports only from its own package and from
the layers below it. The test reads every module's imports (also those inside functions) with ast."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "csg"

#: package -> layer; a package may import packages of a lower layer, and the siblings listed in SIBLINGS
LAYERS = {
    "core": 0,
    "data": 1, "backbones": 1, "metrics": 1,
    "methods": 2,
    "training": 3,
    "runs": 4,
    "analysis": 5, "localization": 5, "adversarial": 5, "explain": 6, "graph": 6, "atlas": 6, "integrations": 6,
    "report": 7,
    "experiment": 8,
    "cli": 9,
    "__init__": 10, "__main__": 10,
}
#: the applications that build on another application's results (never the other way round)
SIBLINGS: dict[str, set[str]] = {}


def _imports(path: Path, src: Path = SRC) -> set[str]:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    if parts[-1] == "__init__":
        package = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if not node.module:  # "from .. import x": x is a module of that package
                    for a in node.names:
                        found.add(".".join(target + [a.name]))
                    continue
            else:
                target = (node.module or "").split(".")
            found.add(".".join(target))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {t for t in found if t == "csg" or t.startswith("csg.")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py")}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS and docs/architecture.md: {packages - set(LAYERS)}"


def violations(src: Path) -> list[str]:
    bad = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for target in _imports(path, src):
            there = _package(target)
            if there == here or (here in ("__init__", "__main__")):
                continue
            if LAYERS[there] < LAYERS[here] or there in SIBLINGS.get(here, ()):
                continue
            bad.append(f"{rel} imports {target} ({there}, layer {LAYERS[there]}) from layer {LAYERS[here]}")
    return sorted(bad)


def test_no_import_points_up():
    bad = violations(SRC)
    assert not bad, "imports against the direction of the layers:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    src = tmp_path / "csg"
    for pkg, text in (("core", "from ..report import compare\nfrom . import gate\n"), ("report", "from ..core import io\n"),
                      ("cli", "def f():\n    from csg.training import trainer\n")):
        (src / pkg).mkdir(parents=True)
        (src / pkg / "__init__.py").write_text("")
        (src / pkg / "mod.py").write_text(text)
    bad = violations(src)
    assert len(bad) == 1 and bad[0].startswith("core/mod.py imports csg.report")
