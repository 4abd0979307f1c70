"""The config schema (``workflow/schemas/config.schema.yaml``): the one place each default
of the study is written. Code called without a config (the CLI, tests, benchmarks) takes a
default from here instead of writing it again."""

from __future__ import annotations

import functools
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def schema_default(*keys: str):
    """The schema's default of a config key (``"threads"``, ``"bootstrap", "seed"``); for an
    object key, the dict of its properties' defaults. The schema is the one place a default
    is written: code called without a config (the CLI, tests, benchmarks) takes it from here."""
    node = _schema()
    for key in keys:
        node = node["properties"][key]
    if "properties" in node:
        # an object property without a default of its own (decoding.fallback) stays out
        return {k: schema_default(*keys, k) for k, v in node["properties"].items()
                if "default" in v}
    return node["default"]


def with_defaults(section: str, values: dict | None) -> dict:
    """``values`` of an object key (``decoding``) with the schema's defaults filled in."""
    return {**schema_default(section), **(values or {})}


def fill_defaults(config: dict) -> dict:
    """Fill the schema's defaults into ``config`` in place, without checking types: what
    ``snakemake.utils.validate`` does on a machine without Snakemake (the GPU kit's image)."""
    for key, node in _schema()["properties"].items():
        if "default" in node:
            config.setdefault(key, node["default"])
        if "properties" in node and isinstance(config.get(key), dict):
            config[key] = with_defaults(key, config.get(key))
    return config
