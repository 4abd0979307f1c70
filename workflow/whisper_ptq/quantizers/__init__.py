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
}


def module_path(library: str) -> Path:
    """Source file of a library's module (a Snakemake input, so editing it re-runs only its jobs)."""
    return Path(__file__).with_name(f"{_module_name(library)}.py")


def _module_name(library: str) -> str:
    if library not in LIBRARIES:
        raise PipelineError(f"unknown library {library!r}; known: {', '.join(sorted(LIBRARIES))}")
    return LIBRARIES[library]


def get(library: str):
    """The Quantizer instance of a library (its heavy imports happen only when used)."""
    return importlib.import_module(f"{__name__}.{_module_name(library)}").QUANTIZER
