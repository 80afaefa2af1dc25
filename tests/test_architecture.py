"""docs/architecture.md is true to the imports: every `agenticrec` module imports only from its own layer or the
layers above it (module-level and function-level imports alike), and no script imports a script."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_grpo", "train_ppr", "evaluate")
# data's command line adds convert's and importer's commands (function-level imports)
ALLOWED_CYCLES = {("data", "convert"), ("data", "importer")}


def layers() -> dict[str, int]:
    """{module: layer number} from the table in docs/architecture.md."""
    out = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        row = re.match(r"\| (\d+)\. [^|]+ \| ([^|]+) \|", line)
        if row:
            for module in re.findall(r"`(\w+)`", row[2]):
                out[module] = int(row[1])
    return out


def imports(path: Path) -> set[str]:
    """The agenticrec modules and top-level scripts ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "agenticrec":
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found |= {parts[1]} if parts[0] == "agenticrec" and len(parts) > 1 else set()
                found |= {parts[0]} if parts[0] in SCRIPTS else set()
    return found


def test_every_module_is_in_the_table():
    table = layers()
    modules = {p.stem for p in (ROOT / "agenticrec").glob("*.py")} - {"__init__", "demo"}
    assert modules == set(table), (modules - set(table), set(table) - modules)


def test_each_module_imports_only_from_its_layer_or_above():
    table = layers()
    wrong = [(p.stem, dep) for p in (ROOT / "agenticrec").glob("*.py") if p.stem in table
             for dep in imports(p) - {p.stem}
             if table[dep] > table[p.stem] and (p.stem, dep) not in ALLOWED_CYCLES]
    assert wrong == []


def test_no_script_imports_a_script_and_no_private_name_crosses_a_module():
    for path in [ROOT / f"{s}.py" for s in SCRIPTS] + list((ROOT / "agenticrec").glob("*.py")):
        assert not imports(path) & set(SCRIPTS), path.name
        text = path.read_text()
        assert not re.search(r"from agenticrec\.\w+ import [^\n]*\b_\w", text), path.name
        assert not re.search(r"\b(?:D|G|np|torch)\._[a-z]\w*\(", text.replace("torch._C", "")), path.name
