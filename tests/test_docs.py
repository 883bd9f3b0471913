"""The docs say what the code does: tables that name the code's own lists are checked against them."""
import dataclasses
import re
from pathlib import Path

import pytest

from micromixer_edge import format as fmt

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast


def _table(path: Path, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with `first_header`, cells stripped."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_scheme_table_of_docs_format_md_is_the_codes():
    rows = _table(ROOT / "docs" / "format.md", "mode")
    documented = {re.search(r"`([^`]+)`", mode).group(1): re.search(r"`([^`]+)`", scheme).group(1)
                  for mode, scheme, *_ in rows}
    assert documented == fmt.QUANT_SCHEMES
    default = next(re.search(r"`([^`]+)`", mode).group(1) for mode, *_ in rows if "default" in mode)
    assert default == fmt.DEFAULT_QUANT_MODE
    for mode, *_ in rows:  # each --target named in the table picks that mode
        for target in re.findall(r"--target (\w+)", mode):
            assert fmt.TARGETS[target] == re.search(r"`([^`]+)`", mode).group(1)


def test_the_field_table_of_docs_server_md_is_the_servers():
    """Every request field the server reads or refuses is a row of docs/server.md's table, and
    every row is one of them; a refused field's row says so."""
    from micromixer_edge.serve.fields import FIELDS, REFUSED, STRUCTURED
    rows = _table(ROOT / "docs" / "server.md", "field")
    documented = {name: row[1] for row in rows for name in re.findall(r"`([a-z_]+)", row[0])}
    assert set(documented) == {f.name for f in FIELDS} | set(REFUSED) | set(STRUCTURED) | {"prompt", "messages"}
    for name in REFUSED:
        assert documented[name].startswith("refused (400)")
    for name in {f.name for f in FIELDS}:
        assert not documented[name].startswith("refused")


def test_the_sampling_bounds_in_the_docs_and_the_playground_are_sampling_params():
    """Each sampling bound has one home (SamplingParams' field metadata): the docs' table states
    the server's 400 text and default for each, and the playground's inputs carry the same."""
    from micromixer_edge.runtime.sampling import SamplingParams
    from micromixer_edge.serve.fields import FIELDS
    from micromixer_edge.serve.settings import Settings
    rows = _table(ROOT / "docs" / "server.md", "field")
    for field in FIELDS:
        bound = {f.name: f.metadata.get("bound") for f in dataclasses.fields(SamplingParams)}.get(field.option)
        if bound is None:
            continue
        row = next(r for r in rows if f"`{field.name}`" in r[0])
        assert field.what(None) == bound.text(served=True) and row[1].startswith(field.what(None)), row
        assert row[2] == f"{getattr(SamplingParams(), field.option):g}", row
    page = (ROOT / "micromixer_edge" / "serve" / "static" / "index.html").read_text()
    temperature = re.search(r'id="temperature"[^>]*min="([\d.]+)" max="([\d.]+)"[^>]*value="([\d.]+)"', page)
    bound = SamplingParams.bound("temperature")
    assert [float(x) for x in temperature.groups()] == [bound.low, bound.served, SamplingParams().temperature]
    max_tokens = re.search(r'id="max_tokens"[^>]*max="(\d+)"', page)
    assert int(max_tokens.group(1)) == next(f.default for f in dataclasses.fields(Settings) if f.name == "max_tokens_limit")


def test_the_route_table_of_docs_server_md_is_the_apps():
    pytest.importorskip("starlette")
    from micromixer_edge.serve.app import ROUTES
    documented = {tuple(re.search(r"`(\w+) ([^`]+)`", row[0]).groups()) for row in _table(ROOT / "docs" / "server.md", "route")}
    assert documented == {(method, path.replace("{model:path}", "{id}")) for method, path, _ in ROUTES}
