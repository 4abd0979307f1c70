"""One module per quantization library, all behind the small interface in ``base``.

To add a library: write ``<module>.py`` defining a ``Quantizer`` subclass named
``QUANTIZER`` (an instance), and add one line to ``LIBRARIES`` below.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .. import PipelineError

# config `library:` value -> module in this package
LIBRARIES = {
    "fp": "fp",
    "torch": "pytorch",
    "quanto": "quanto",
    "hqq": "hqq",
    "bnb": "bnb",
    "ct2": "ct2",
    "torchao": "torchao",
    "whispercpp": "whispercpp",
    "ort": "ort",
    "openvino": "ov",
}


def module_paths(library: str) -> list[Path]:
    """Source files of a library's module and of the library modules it imports, itself first
    (Snakemake inputs: editing one re-runs only the entries that use it; OpenVINO's module
    converts the ONNX Runtime module's export)."""
    import ast

    todo, out = [_module_name(library)], []
    while todo:
        path = Path(__file__).with_name(f"{todo.pop(0)}.py")
        if path in out:
            continue
        out.append(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from . / from .x
                names = [node.module] if node.module else [a.name for a in node.names]
                todo += [n for n in names if n in LIBRARIES.values()]
    return out


def _module_name(library: str) -> str:
    if library not in LIBRARIES:
        raise PipelineError(f"unknown library {library!r}; known: {', '.join(sorted(LIBRARIES))}")
    return LIBRARIES[library]


def get(library: str):
    """The Quantizer instance of a library (its heavy imports happen only when used)."""
    return importlib.import_module(f"{__name__}.{_module_name(library)}").QUANTIZER
