import gzip
import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# A deterministic suite: hypothesis draws the same examples on every run and machine (a property that fails is
# reproduced by the next run, and CI never fails by chance). HYPOTHESIS_PROFILE=explore draws fresh examples.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level scripts (train_grpo.py) are importable


def _unpack_tokenizer(src: Path, dst: Path, vocab_gz: Path) -> Path:
    dst.mkdir(parents=True)
    for file in src.iterdir():
        if file.is_file() and file.suffix != ".gz" and file.name != "README.md":
            shutil.copy(file, dst / file.name)
    for gz, name in ((vocab_gz, "vocab.json"), (src / "merges.txt.gz", "merges.txt")):
        (dst / name).write_bytes(gzip.decompress(gz.read_bytes()))
    return dst


@pytest.fixture(scope="session")
def qwen3_tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    """The real Qwen3 tokenizer folders: {"Qwen3-0.6B": path, "Qwen3-4B-Instruct-2507": path}."""
    root = tmp_path_factory.mktemp("qwen3_tokenizer")
    src = FIXTURES / "qwen3_tokenizer"
    vocab = src / "vocab.json.gz"
    return {
        "Qwen3-0.6B": _unpack_tokenizer(src, root / "Qwen3-0.6B", vocab),
        "Qwen3-4B-Instruct-2507": _unpack_tokenizer(src / "Qwen3-4B-Instruct-2507", root / "2507", vocab),
    }


@pytest.fixture(scope="session")
def tokenizer(qwen3_tokenizer_dirs):
    """The real Qwen3-4B-Instruct-2507 tokenizer (the paper recipe's chat and tool-call format)."""
    from agenticrec.tokenizer import load_tokenizer
    return load_tokenizer(qwen3_tokenizer_dirs["Qwen3-4B-Instruct-2507"])
