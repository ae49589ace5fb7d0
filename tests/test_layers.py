"""Imports only go down the layers of DESIGN.md §2; every module has a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ciwatch"

DATA, PURE, ADAPTER, ORCHESTRATION, COMPOSITION = range(5)
NAMES = ["data", "pure logic", "adapters", "orchestration", "composition"]

# Module (or package prefix ending in '.') -> layer. The most specific entry wins.
LAYERS = {
    "ciwatch": DATA,
    "ciwatch.errors": DATA,
    "ciwatch.model": DATA,
    "ciwatch.pipeline.plan": DATA,
    "ciwatch.executors": DATA,
    "ciwatch.executors.base": DATA,
    "ciwatch.observer": DATA,
    "ciwatch.pipeline": PURE,
    "ciwatch.pipeline.": PURE,
    "ciwatch.pipeline.sizes": PURE,
    "ciwatch.pipeline.resources": PURE,
    "ciwatch.yamlsafe": PURE,
    "ciwatch.validation": PURE,
    "ciwatch.masking": PURE,
    "ciwatch.config": PURE,
    "ciwatch.imageref": PURE,
    "ciwatch.stepenv": PURE,
    "ciwatch.store": ADAPTER,
    "ciwatch.store.": ADAPTER,
    "ciwatch.logs": ADAPTER,
    "ciwatch.logread": ADAPTER,
    "ciwatch.git": ADAPTER,
    "ciwatch.commitinfo": ADAPTER,
    "ciwatch.apiclient": ADAPTER,
    "ciwatch.workspace": ADAPTER,
    "ciwatch.attemptdir": ADAPTER,
    "ciwatch.fstree": ADAPTER,
    "ciwatch.diskspace": ADAPTER,
    "ciwatch.wscache": ADAPTER,
    "ciwatch.checkouts": ADAPTER,
    "ciwatch.gittemplate": ADAPTER,
    "ciwatch.artifacts": ADAPTER,
    "ciwatch.executors.": ADAPTER,
    "ciwatch.executors.cgroups": ADAPTER,
    "ciwatch.executors.cgroupfs": ADAPTER,
    "ciwatch.executors.containercgroup": ADAPTER,
    "ciwatch.executors.launch": ADAPTER,
    "ciwatch.executors.limits": ADAPTER,
    "ciwatch.executors.stepstart": ADAPTER,
    "ciwatch.executors.subreaper": ADAPTER,
    "ciwatch.runner": ORCHESTRATION,
    "ciwatch.steprun": ORCHESTRATION,
    "ciwatch.stepgraph": ORCHESTRATION,
    "ciwatch.app": COMPOSITION,
    "ciwatch.cli": COMPOSITION,
    "ciwatch.console": COMPOSITION,
    "ciwatch.localrun": COMPOSITION,
    "ciwatch.logview": COMPOSITION,
    "ciwatch.demo": COMPOSITION,
    "ciwatch.__main__": COMPOSITION,
    "ciwatch.commands": COMPOSITION,
    "ciwatch.commands.": COMPOSITION,
    "ciwatch.commands.statusview": COMPOSITION,
    "ciwatch.daemon": COMPOSITION,
    "ciwatch.daemonops": COMPOSITION,
    "ciwatch.webapp": COMPOSITION,
    "ciwatch.statelock": ADAPTER,
    "ciwatch.executors.containerwatch": ADAPTER,
    "ciwatch.faults": COMPOSITION,
    "ciwatch.logsetup": COMPOSITION,
    "ciwatch.forgewiring": COMPOSITION,
    "ciwatch.worker": COMPOSITION,
    "ciwatch.workerstate": ADAPTER,
    "ciwatch.why": COMPOSITION,
    "ciwatch.sources": PURE,
    "ciwatch.sources.refdiff": PURE,
    "ciwatch.sources.": ADAPTER,
    "ciwatch.sources.remoterefs": ADAPTER,
    "ciwatch.hookinstall": ADAPTER,
    "ciwatch.control": ADAPTER,
    "ciwatch.controlclient": ADAPTER,
    "ciwatch.sdnotify": ADAPTER,
    "ciwatch.intake": ORCHESTRATION,
    "ciwatch.scheduler": ORCHESTRATION,
    "ciwatch.resolve": ORCHESTRATION,
    "ciwatch.recovery": ORCHESTRATION,
    "ciwatch.retention": ORCHESTRATION,
    "ciwatch.retentionpolicy": ORCHESTRATION,
    "ciwatch.retentionfs": ADAPTER,
    "ciwatch.dispatch": ORCHESTRATION,
    "ciwatch.forges": DATA,
    "ciwatch.forges.types": DATA,
    "ciwatch.forges.status": PURE,
    "ciwatch.forges.answers": PURE,
    "ciwatch.forges.webhooks": PURE,
    "ciwatch.forges.payloads": PURE,
    "ciwatch.forges.payloadfields": PURE,
    "ciwatch.forges.pullrequests": PURE,
    "ciwatch.forges.signatures": PURE,
    "ciwatch.forges.client": ADAPTER,
    "ciwatch.forges.tokencheck": ADAPTER,
    "ciwatch.forges.": ADAPTER,
    "ciwatch.outbox": ORCHESTRATION,
    "ciwatch.reporting": ORCHESTRATION,
    "ciwatch.web": ADAPTER,
    "ciwatch.web.": ADAPTER,
    "ciwatch.web.ansi": PURE,
    "ciwatch.web.webfmt": PURE,
    "ciwatch.web.logindex": ADAPTER,
    "ciwatch.web.logapi": ADAPTER,
    "ciwatch.web.logrecords": ADAPTER,
    "ciwatch.web.live": ADAPTER,
    "ciwatch.web.badges": ADAPTER,
    "ciwatch.web.pages": ADAPTER,
}

# Libraries that do I/O: never imported by the data or pure layers.
IO_LIBS = {
    "subprocess",
    "sqlite3",
    "socket",
    "requests",
    "http",
    "urllib.request",
    "watchdog",
    "git",
    "apscheduler",
    "shutil",
    "select",
    "signal",
    "ctypes",
    "tempfile",
}


def layer_of(module: str) -> int | None:
    if module in LAYERS:
        return LAYERS[module]
    best = None
    for key, layer in LAYERS.items():
        if (
            key.endswith(".")
            and module.startswith(key)
            and (best is None or len(key) > len(best[0]))
        ):
            best = (key, layer)
    return best[1] if best else None


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from ciwatch import pipeline` imports the submodule
            for a in node.names:
                if f"{mod}.{a.name}" in {m for m, _ in modules()}:
                    found.add(f"{mod}.{a.name}")
    return found


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_go_down(module: str, path: Path) -> None:
    mine = layer_of(module)
    assert mine is not None, f"{module} has no layer: add it to LAYERS in {__file__}"
    for imp in sorted(imports(module, path)):
        if imp.startswith("ciwatch"):
            theirs = layer_of(imp)
            assert theirs is not None, f"{module} imports {imp}, which has no layer"
            assert theirs <= mine, (
                f"{module} ({NAMES[mine]}) imports {imp} ({NAMES[theirs]}): imports only go down"
            )
            if theirs == COMPOSITION:
                assert mine == COMPOSITION, f"{module} imports the composition root {imp}"
        elif mine <= PURE:
            top = imp.split(".")[0]
            assert imp not in IO_LIBS and top not in IO_LIBS, (
                f"{module} ({NAMES[mine]}) imports {imp}, an I/O library"
            )


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from ciwatch.store import Store\nimport subprocess\n")
    found = imports("ciwatch.model", bad)
    assert "ciwatch.store" in found and "subprocess" in found
    assert layer_of("ciwatch.store") > layer_of("ciwatch.model")
