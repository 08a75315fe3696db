"""Where code lives: the core stays Dagster-free and below the assets, the package has no import
cycle, every artifact kind loads in a fresh process, and the asset graph declares what assets read."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "semid_pipeline"
PKG = PACKAGE.name


def _modules(package: Path = PACKAGE) -> dict:
    """Module name -> file for every module of the package."""
    mods = {}
    for f in package.rglob("*.py"):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(module: str, path: Path, mods: dict) -> list:
    """Every module ``module`` imports (top-level and lazy imports alike), as written and resolved to the package's modules."""
    found = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found += [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    return found


def _resolve(name: str, mods: dict):
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict:
    mods = _modules()
    graph = {}
    for m, f in mods.items():
        targets = {_resolve(t, mods) for t in _imports(m, f, mods) if t.split(".")[0] == PKG}
        graph[m] = {t for t in targets if t and t != m}
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected groups of more than one module (Tarjan), except a package ``__init__``
    with one of its own children (a re-export, harmless)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            strong(v)
    return [c for c in out if len(c) > 2 or not all(x == c[0] or x.startswith(c[0] + ".") for x in c)]


def test_cycle_finder_finds_a_cycle():
    # the checker itself must be able to fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"p": {"p.x"}, "p.x": {"p"}}) == []  # package __init__ <-> child: a re-export


def _core_violations(package: Path = PACKAGE) -> list:
    """Imports of dagster, or of a module of the package outside ``core``, by a module under ``core``."""
    mods, pkg = _modules(package), package.name
    bad = []
    for m, f in mods.items():
        if not m.startswith(f"{pkg}.core"):
            continue
        for target in _imports(m, f, mods):
            top = target.split(".")[0]
            if top == "dagster" or top.startswith("dagster_"):
                bad.append(f"{m} imports {target}")
            elif top == pkg:
                r = _resolve(target, mods)
                if r and r != pkg and not r.startswith(f"{pkg}.core"):
                    bad.append(f"{m} imports {r} (outside the core: assets, resources, devtools, ...)")
    return bad


def test_core_check_catches_dagster_and_asset_imports(tmp_path):
    pkg = tmp_path / "semid_pipeline"
    for rel, text in {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/ok.py": "import numpy\nfrom semid_pipeline.core import ok\n",
        "core/bad.py": "def f():\n    import dagster\n    from semid_pipeline.assets.recommender import x\n",
        "assets/__init__.py": "",
        "assets/recommender.py": "import dagster\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    assert _core_violations(pkg) == [
        "semid_pipeline.core.bad imports dagster",
        "semid_pipeline.core.bad imports semid_pipeline.assets.recommender (outside the core: assets, resources, devtools, ...)",
    ]


def test_core_imports_neither_dagster_nor_the_outer_layers():
    bad = _core_violations()
    assert not bad, "\n".join(bad)


def test_asset_files_do_not_import_each_other():
    graph = _graph()
    bad = [f"{m} imports {t}" for m, ts in graph.items() if m.startswith(f"{PKG}.assets.") for t in ts if t.startswith(f"{PKG}.assets")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_in_the_package():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _registered_kinds() -> dict:
    """``KIND`` of every class decorated with ``@register_artifact`` in the package source -> its module."""
    kinds = {}
    for m, f in _modules().items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "register_artifact" for d in node.decorator_list):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "KIND" for t in stmt.targets):
                        kinds[stmt.value.value] = m
    return kinds


def test_every_artifact_kind_loads_in_a_fresh_process(tmp_path):
    kinds = _registered_kinds()
    assert {"sid_tokenizer", "tiger", "sasrec", "query_sid_retriever", "cmsa_fusion"} <= set(kinds), kinds
    for kind in kinds:  # a directory per kind: enough for load_artifact to look the kind up
        d = tmp_path / kind
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"kind": kind, "config": {}, "format_version": 1}))
    script = textwrap.dedent(
        f"""
        import json, sys
        from semid_pipeline.core.artifacts import load_artifact
        unknown = []
        for kind in {sorted(kinds)!r}:
            try:
                load_artifact({str(tmp_path)!r} + "/" + kind)
            except Exception as e:  # the empty config cannot build a model; only an unknown kind matters here
                if "unknown model kind" in str(e):
                    unknown.append(kind)
        print(json.dumps(unknown))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    unknown = json.loads(out.stdout.strip().splitlines()[-1])
    assert unknown == [], f"load_artifact in a fresh process does not know {unknown} (add their modules to artifacts._import_known_kinds)"


def test_generative_recommender_lineage_includes_item_quality_scores():
    # the QARM reward reads item_quality_scores: as a declared input, Dagster orders descriptor_quality
    # before the recommender and a missing table is an error instead of a silent "no scores"
    from dagster import AssetKey

    from semid_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(AssetKey("generative_recommender")).parent_keys}
    assert {"item_quality_scores", "semantic_ids", "user_sequences", "item_tags"} <= parents, parents
    assert AssetKey("generative_recommender") in graph.get(AssetKey("item_quality_scores")).child_keys
