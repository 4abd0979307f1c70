"""The package's layers: the decoding loop sits below checkpoint (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import whisper_ptq

PACKAGE = Path(whisper_ptq.__file__).parent


def package_imports(module: str) -> set[str]:
    """Every whisper_ptq module ``module`` imports, at the top or inside a function."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    here = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("whisper_ptq")}
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            if not name.startswith("whisper_ptq"):
                continue
            found.add(name)
            for a in node.names:  # `from . import provenance` names a module
                sub = f"{name}.{a.name}"
                if PACKAGE.joinpath(*sub.split(".")[1:]).with_suffix(".py").is_file():
                    found.add(sub)
    return found - {module}


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for m in package_imports(todo.pop()) - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_decode_imports_no_checkpoint_quantizers_or_step():
    below = reachable("whisper_ptq.decode")
    assert "whisper_ptq.features" in below  # the walk follows imports
    assert not {m for m in below if m.startswith(("whisper_ptq.checkpoint",
                                                  "whisper_ptq.quantizers",
                                                  "whisper_ptq.transcribe"))}


def test_transcribe_step_still_names_what_the_rules_import():
    from whisper_ptq.transcribe import excluded_ids, shard_bounds  # rules/common.smk

    assert shard_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)] and callable(excluded_ids)
    assert "whisper_ptq.checkpoint" in reachable("whisper_ptq.transcribe")
