"""envs/*.yaml (one conda env per rule family) and requirements.txt cannot drift apart.

* every pip package of an env is pinned (==), to requirements.txt's version where both name it;
* if requirements.txt pins a package that an env installs as a dependency of its pins (per the
  installed metadata of the venv built from requirements.txt), the env pins it too, same version;
* every rule that runs a command names a `conda:` env that exists;
* every third-party package the code of a rule's CLI step imports (found by walking the step's
  functions and what they call, statically) is pinned in that rule's env.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "workflow" / "whisper_ptq"
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        spec = str(req.specifier)
        assert spec.startswith("==") and "," not in spec, f"requirements.txt: {line!r} is not pinned with =="
        pins[norm(req.name)] = spec[2:]
    return pins


def env_spec(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(conda pins {name: version}, pip pins {name: version}) of an env file."""
    spec = yaml.safe_load(path.read_text())
    conda, pip = {}, {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                req = Requirement(line)
                spec_s = str(req.specifier)
                assert spec_s.startswith("==") and "," not in spec_s, \
                    f"{path.name}: pip package {line!r} is not pinned with =="
                pip[norm(req.name)] = spec_s[2:]
        else:
            name, _, version = str(dep).partition("=")
            conda[norm(name)] = version.lstrip("=")
    return conda, pip


def dependency_closure(names) -> set[str]:
    """The names and everything they require (non-extra requirements of the installed dists)."""
    seen, todo = set(), [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in reqs:
            req = Requirement(r)
            if req.marker is not None:
                try:
                    if not req.marker.evaluate({"extra": ""}):
                        continue
                except Exception:
                    continue
            todo.append(norm(req.name))
    return seen


# --- which env each rule uses, and which CLI step it runs ---------------------------------

def rules() -> dict[str, dict]:
    """{rule: {"conda": path or None, "step": whisper_ptq.steps function or None, "runs": bool}}."""
    out = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        text = smk.read_text()
        blocks = re.split(r"^(?:rule|checkpoint) (\w+):\s*$", text, flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            body = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]  # up to the next top-level line
            conda = re.search(r"^\s+conda:\s*\n\s+[\"']([^\"']+)[\"']", body, flags=re.M)
            # a rule runs its step through STEP (common.smk) with params **step("<step>")
            step = re.search(r'^\s+\*\*step\("(\w+)"\),$', body, flags=re.M)
            if step:
                assert re.search(r"^\s+shell:\s*\n\s+STEP$", body, flags=re.M), f"rule {name}: not STEP"
            out[name] = {
                "conda": (smk.parent / conda.group(1)).resolve() if conda else None,
                "step": step.group(1) if step else None,
                "runs": bool(re.search(r"^\s+(shell|run|script|notebook|wrapper):", body, flags=re.M)),
            }
    return out


# --- static import analysis of a step ----------------------------------------------------

@lru_cache(maxsize=None)
def module_tree(mod: str) -> ast.Module | None:
    """AST of whisper_ptq module ``mod`` ('whisper_ptq.x.y')."""
    parts = mod.split(".")[1:]
    path = PKG.joinpath(*parts).with_suffix(".py")
    if not path.is_file():
        path = PKG.joinpath(*parts, "__init__.py")
    return ast.parse(path.read_text()) if path.is_file() else None


def resolve_relative(mod: str, level: int, target: str | None) -> str:
    tree_is_pkg = (PKG.joinpath(*mod.split(".")[1:], "__init__.py")).is_file()
    base = mod.split(".")
    base = base if tree_is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def is_module(mod: str) -> bool:
    return module_tree(mod) is not None


class StepImports:
    """Third-party top-level imports reached from a function, following package calls."""

    def __init__(self):
        self.third_party: set[str] = set()
        self.seen: set[tuple[str, str]] = set()
        self.modules: set[str] = set()

    def _bindings(self, mod: str, nodes) -> dict[str, tuple[str, str | None]]:
        """name -> (module, attr) for relative imports (attr None: a module)."""
        b = {}
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level:
                for alias in node.names:
                    base = resolve_relative(mod, node.level, node.module)
                    full = f"{base}.{alias.name}"
                    b[alias.asname or alias.name] = (full, None) if is_module(full) else (base, alias.name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("whisper_ptq"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    b[alias.asname or alias.name] = (full, None) if is_module(full) else (node.module, alias.name)
        return b

    def _third_party(self, nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top and top != "whisper_ptq" and top not in sys.stdlib_module_names \
                        and top != "__future__":
                    self.third_party.add(top)

    def module(self, mod: str):
        """Importing ``mod`` runs its top level (and its parents')."""
        if mod in self.modules:
            return
        self.modules.add(mod)
        parts = mod.split(".")
        for i in range(1, len(parts)):
            self.module(".".join(parts[:i]))
        tree = module_tree(mod)
        if tree is None:
            return
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        self._third_party(top)
        for m, _ in self._bindings(mod, top).values():
            self.module(m)
        if mod == "whisper_ptq.quantizers":  # get() imports every library module dynamically
            from whisper_ptq.quantizers import LIBRARIES

            for name in LIBRARIES.values():
                self.whole_module(f"whisper_ptq.quantizers.{name}")

    def whole_module(self, mod: str):
        self.module(mod)
        for node in module_tree(mod).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                self.function(mod, node.name)

    def function(self, mod: str, name: str):
        if (mod, name) in self.seen:
            return
        self.seen.add((mod, name))
        self.module(mod)
        tree = module_tree(mod)
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        if name not in defs:
            return
        node = defs[name]
        module_bindings = self._bindings(mod, tree.body)
        inner = list(ast.walk(node))
        self._third_party(inner)
        local = self._bindings(mod, inner)
        bindings = {**module_bindings, **local}
        for m, _ in local.values():
            self.module(m)
        for sub in inner:
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                if sub.id in defs and sub.id != name:
                    self.function(mod, sub.id)
                elif sub.id in bindings and bindings[sub.id][1] is not None:
                    self.function(*bindings[sub.id])
            elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                target = bindings.get(sub.value.id)
                if target and target[1] is None:
                    self.function(target[0], sub.attr)


def step_packages(step: str) -> set[str]:
    """Distributions (normalised) the step ``step`` (whisper_ptq.steps) imports."""
    walker = StepImports()
    walker.module("whisper_ptq.cli")  # the command every rule runs
    walker.function("whisper_ptq.steps", step)
    dists = metadata.packages_distributions()
    out = set()
    for top in walker.third_party:
        assert top in dists, f"step {step}: imports {top!r}, which no installed distribution provides"
        out.update(norm(d) for d in dists[top])
    return out


# --- tests -------------------------------------------------------------------------------

def test_there_is_one_env_per_rule_family():
    assert {p.stem for p in ENVS} >= {"data", "features", "ptq", "report"}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(env):
    pins = requirements()
    conda, pip = env_spec(env)
    assert conda.get("python"), f"{env.name}: no python version"
    assert conda["python"] == f"{sys.version_info.major}.{sys.version_info.minor}", \
        f"{env.name}: python={conda['python']}, the tested venv runs {sys.version.split()[0]}"
    for name, version in pip.items():
        if name in pins:
            assert version == pins[name], f"{env.name}: {name}=={version}, requirements.txt has {pins[name]}"
    for name in dependency_closure(pip) & set(pins):
        assert name in pip, (f"{env.name}: installs {name} as a dependency of its pins but does not "
                             f"pin it (requirements.txt: {name}=={pins[name]})")


def test_every_rule_that_runs_something_names_an_existing_env():
    found = rules()
    # every rule that runs a step is recognised as running one (else the test below is empty)
    assert {n for n, r in found.items() if r["step"]} == {
        "download", "model", "features", "quantize", "transcribe", "score", "report"}
    assert {"download", "model", "features", "quantize", "transcribe", "score", "report"} <= set(found)
    for name, r in found.items():
        if r["runs"]:
            assert r["conda"] is not None, f"rule {name} has no conda: env"
            assert r["conda"].is_file(), f"rule {name}: conda env {r['conda']} does not exist"
            assert r["conda"].parent == REPO / "envs"


@pytest.mark.parametrize("rule", sorted(n for n, r in rules().items() if r["step"]))
def test_rule_env_pins_every_package_its_step_imports(rule):
    r = rules()[rule]
    _, pip = env_spec(r["conda"])
    needed = step_packages(r["step"])
    missing = sorted(needed - set(pip))
    assert not missing, f"rule {rule} (step {r['step']}) imports {missing}, not pinned in envs/{r['conda'].name}"


def test_import_analysis_follows_calls_into_the_package():
    """The walker finds imports made inside called functions, not just module tops."""
    assert {"torch", "transformers"} <= step_packages("quantize")
    assert {"jiwer", "whisper-normalizer"} <= step_packages("score")
    assert "huggingface-hub" in step_packages("model")
    assert "torch" not in step_packages("download")
