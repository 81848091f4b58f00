"""The package's import layering, checked on the source with ``ast`` (nothing is imported).

Every ``import``/``from ... import`` anywhere in a module counts, also the lazy ones inside
functions: a lazy import still makes the lower layer depend on the upper one.

Rules (issue 12 §2, audit architecture.md §1 "Arrows that run back up"):

* ``vqgan_lc.tokens`` never imports ``vqgan_lc.generate`` (the token format must not know generation);
* ``vqgan_lc.metrics``, ``vqgan_lc.tokens`` and ``vqgan_lc.model`` never import ``vqgan_lc.codebook``
  (the codebook builder: store, k-means, build);
* nothing inside ``vqgan_lc`` imports the package face ``vqgan_lc/__init__.py`` for a name
  (``from .. import X`` / ``from vqgan_lc import X`` where ``X`` is not a submodule);
* the framework-free layers (``nn``, ``quantize``, ``losses``, ``codebook``, ``model.py``) never import
  Lightning or ``argparse``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "vqgan_lc"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


@dataclass(frozen=True)
class Edge:
    """One import statement: ``source`` module imports ``target`` (absolute dotted names)."""

    source: str
    target: str
    names: tuple[str, ...]
    line: int

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.source}:{self.line} -> {self.target}{names}"


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    for path in sorted(ROOT.rglob("*.py")):
        module, is_package = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges.append(Edge(module, alias.name, (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node.level, node.module)
                edges.append(Edge(module, target, tuple(a.name for a in node.names), node.lineno))
    return edges


EDGES = _edges()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    return sorted(
        str(e)
        for e in EDGES
        if any(_within(e.source, s) for s in sources) and any(_within(e.target, t) for t in targets)
    )


def _is_submodule(name: str) -> bool:
    return (ROOT / f"{name}.py").is_file() or (ROOT / name / "__init__.py").is_file()


def test_the_scan_sees_the_package() -> None:
    modules = {e.source for e in EDGES}
    # the scan must find the layers it checks, or every rule below would pass vacuously
    for m in ("vqgan_lc.model", "vqgan_lc.tokens.encode", "vqgan_lc.metrics.evaluate", "vqgan_lc.codebook.build",
              "vqgan_lc.quantize.lc", "vqgan_lc.nn.encoder", "vqgan_lc.losses.perceptual"):
        assert m in modules
    assert len(EDGES) > 200
    # relative imports resolve to absolute names
    assert any(e.source == "vqgan_lc.model" and e.target == "vqgan_lc.config" for e in EDGES)


def test_tokens_never_import_generate() -> None:
    assert _violations(("vqgan_lc.tokens",), ("vqgan_lc.generate",)) == []


def test_metrics_tokens_and_model_never_import_the_codebook_builder() -> None:
    assert _violations(("vqgan_lc.metrics", "vqgan_lc.tokens", "vqgan_lc.model"), ("vqgan_lc.codebook",)) == []


def test_nothing_imports_the_package_face() -> None:
    bad = sorted(
        str(e)
        for e in EDGES
        if e.target == PACKAGE and e.source != PACKAGE
        and (not e.names or any(not _is_submodule(n) for n in e.names))
    )
    assert bad == []


def test_framework_free_layers_import_no_lightning_or_argparse() -> None:
    layers = ("vqgan_lc.nn", "vqgan_lc.quantize", "vqgan_lc.losses", "vqgan_lc.codebook", "vqgan_lc.model")
    assert _violations(layers, ("lightning", "pytorch_lightning", "argparse")) == []
