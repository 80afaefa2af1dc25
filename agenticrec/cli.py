"""Command-line flags from a Config dataclass: one flag per field, its help text in the field's metadata.

    @dataclass
    class Config:
        lr: float = option(1e-6, "AdamW learning rate (after warm-up)")

    given = parse_flags(Config, "what the script does", argv)   # {"lr": 2e-06} for --lr 2e-6

``parse_flags`` returns only the flags given on the command line, so that a script can layer them over other
sources (a preset, a checkpoint's saved config) and report which value came from where.
"""

from __future__ import annotations

import argparse
import dataclasses


def option(default, help: str):
    """A Config field with its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_flags(config_class, description: str, argv=None) -> dict:
    """``--batch-size N`` for ``batch_size: int``; booleans get ``--x / --no-x``. Only the given flags are returned."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata:
            raise TypeError(f"{config_class.__qualname__}.{f.name} has no help text: declare it with option()")
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=f.metadata["help"])
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
