"""The matrix printed by `ropeconv methods` comes from the code, and the README carries it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ropeconv import methods
from ropeconv.capabilities import format_markdown
from ropeconv.extend.job import FORMATS
from tests.conftest import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_matrix_is_the_generated_one():
    block = re.search(r"<!-- matrix:start -->\n(.*?)\n<!-- matrix:end -->", README.read_text(), re.S)
    assert block, "README.md lost its matrix markers"
    assert block.group(1) == format_markdown(), "README matrix is stale: paste `ropeconv methods --markdown`"


def test_methods_json_lists_every_method_and_format(capsys):
    assert run_cli("methods", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in data["methods"]] == [m.NAME for m in methods.ordered()]
    for row in data["methods"]:
        module = methods.get(row["method"])
        assert set(row["cells"]) == set(FORMATS)
        for fmt, cell in row["cells"].items():
            assert cell["support"] == module.CELLS[fmt].support.value


def test_every_method_module_has_its_parts():
    for m in methods.ordered():
        assert m.__doc__ and m.NAME and m.SUMMARY and callable(m.plan) and callable(m.hf_rope_parameters)
        assert set(FORMATS) <= set(m.CELLS) <= set(FORMATS)
