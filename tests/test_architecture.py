"""The shape of the code (ARCHITECTURE.md): no code outside t5x_like/models/ tests which model
family it holds; the import layers themselves are checked by `lint-imports` (pyproject.toml)."""

import ast
import pathlib
import subprocess
import sys

from testutil import REPO

from t5x_like import models

PACKAGE = REPO / "t5x_like"


def family_branches(source: str, family_names: tuple[str, ...]) -> list[int]:
    """Line numbers of the tests on a model family in `source`: a comparison with a family name
    or a `.family` attribute, a test of `is_encoder_decoder`, or `hasattr(..., "encode")`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(
                (isinstance(o, ast.Constant) and o.value in family_names)
                or (isinstance(o, ast.Attribute) and o.attr == "family")
                for o in operands
            ):
                lines.append(node.lineno)
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
            if any(
                isinstance(n, ast.Attribute) and n.attr == "is_encoder_decoder"
                for n in ast.walk(node.test)
            ):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "hasattr"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "encode"
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_detector_finds_each_kind_of_family_branch():
    source = "\n".join(
        [
            "if cfg.model.family == 'encoder_decoder': pass",
            "x = 1 if task.is_encoder_decoder else 2",
            "y = hasattr(model, 'encode')",
            "z = 'decoder_only' != name",
            "ok = cfg.model.family",  # Reading the field is not a branch.
        ]
    )
    assert family_branches(source, tuple(models.FAMILIES)) == [1, 2, 3, 4]


def test_no_family_branch_outside_models():
    """A family is an adapter (t5x_like/models/): nothing else may test which one it holds.
    interop/ is left out: its files convert the checkpoints of named Hugging Face families."""
    names = tuple(models.FAMILIES)
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[1] in ("models", "interop"):
            continue
        lines = family_branches(path.read_text(encoding="utf-8"), names)
        if lines:
            found[str(relative)] = lines
    assert found == {}


def test_import_contract_holds():
    """The layers of pyproject.toml's import-linter contract (also run by .ci/run)."""
    linter = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(linter), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout
