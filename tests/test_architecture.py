"""The package's shape: no import cycle (module-level or inside functions), the core
imports none of the harness, and docs/architecture.md names every module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sb_sphereface2"


def _modules():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path, name, known):
    """Package modules that ``path`` imports anywhere in its text (function bodies too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != name}


def _graph():
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a cycle of concepts.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_architecture_doc_names_every_module():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and p.name not in doc]
    assert not missing, missing


# --- the core: the loss plugin without the harness -------------------------------------

# What only the harness needs (its `setup.py` extra) and the harness's own packages.
HARNESS_ONLY = ("sklearn", "matplotlib", "onnx", "onnxruntime", "tensorboard",
                "sb_sphereface2.data", "sb_sphereface2.training", "sb_sphereface2.scoring",
                "sb_sphereface2.pretrained", "sb_sphereface2.labels", "sb_sphereface2.hparams")
CORE_SCRIPT = r"""
import importlib.abc, importlib.util, sys
BLOCKED = tuple(sys.argv[1].split(","))

class Guard(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # Every blocked module is as if not installed: importing it fails.
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            return importlib.util.spec_from_loader(name, self)
        return None

    def exec_module(self, module):
        raise ModuleNotFoundError(f"the core imported {module.__name__}")

sys.meta_path.insert(0, Guard())
import torch
import sb_sphereface2
from sb_sphereface2.losses.sharded import ShardedSphereFace2Loss
from sb_sphereface2.models.sharded_head import ShardedSphereFace2Head

schedule = sb_sphereface2.MarginScheduler(final_margin=0.2, start_epoch=1, fix_epoch=2)
lr = sb_sphereface2.WarmupExponentialLR(initial_lr=0.1, final_lr=0.001, warmup_epochs=1, total_epochs=3)
model = sb_sphereface2.ResNet(input_size=16, channels=(4, 4, 8, 8), num_blocks=(1, 1, 1, 1), lin_neurons=8)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for head, loss_class in ((sb_sphereface2.SphereFace2Head(8, 5), sb_sphereface2.SphereFace2Loss),
                         (ShardedSphereFace2Head(8, 5), ShardedSphereFace2Loss),
                         (sb_sphereface2.SphereFace2Head(8, 5), sb_sphereface2.AAMLoss)):
    loss_fn = loss_class(5, margin_scheduler=schedule)
    schedule.step(loss_fn, 3, iterations_per_epoch=4)
    lr.step(optimizer, 3, iterations_per_epoch=4)
    loss = loss_fn(head(model(torch.randn(2, 50, 16), torch.ones(2))), torch.tensor([1, 4]))
    loss.backward()
    assert torch.isfinite(loss)
print("core ok", sorted(m for m in sys.modules if m.startswith("sb_sphereface2")))
"""


def test_the_core_needs_none_of_the_harness():
    """``import sb_sphereface2`` and the losses, heads, models and schedules at work, with
    the harness's dependencies and packages made unimportable (a fresh interpreter)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", CORE_SCRIPT, ",".join(HARNESS_ONLY)], capture_output=True,
                            text=True, cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok" in result.stdout
    loaded = result.stdout.split("core ok", 1)[1]
    assert "sb_sphereface2.losses.sphereface2" in loaded and "sb_sphereface2.training" not in loaded
