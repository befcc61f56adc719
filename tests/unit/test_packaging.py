"""pyproject.toml ships every source package under the one import name `sagastream`."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> set[str]:
    """The import name of every folder with an __init__.py, through the package-dir mapping."""
    found = set()
    for name, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    return found


def test_every_source_package_is_listed() -> None:
    missing = _source_packages() - set(SETUPTOOLS["packages"])
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_nothing_but_sagastream_is_installed_at_the_top_level() -> None:
    assert {name.split(".")[0] for name in SETUPTOOLS["packages"]} == {"sagastream"}
    assert {name.split(".")[0] for name in SETUPTOOLS["package-dir"]} == {"sagastream"}


def test_the_engine_schemas_and_the_demo_files_are_package_data() -> None:
    data = SETUPTOOLS["package-data"]
    assert "schemas/*.avsc" in data["sagastream"]
    assert list((ROOT / "streams" / "schemas").glob("EventMeta.avsc"))
    assert "topology.yaml" in data["sagastream.examples"]
    assert (ROOT / "handlers" / "topology.yaml").resolve() == (ROOT / "topology.yaml")


def test_the_consoles_templates_style_sheet_and_script_are_package_data() -> None:
    patterns = SETUPTOOLS["package-data"]["sagastream.console"]
    folder = ROOT / "streams" / "console"
    shipped = {p for pattern in patterns for p in folder.glob(pattern)}
    assert {p for p in folder.rglob("*") if p.suffix in (".html", ".css", ".js")} == shipped
    assert folder / "templates" / "saga.html" in shipped
    assert folder / "static" / "console.js" in shipped


def test_every_setting_is_in_the_readmes_configuration_table() -> None:
    from sagastream.runtime.settings import Settings

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in table.splitlines():
        if row.startswith("| `SAGASTREAM_"):
            cell = row.split("|")[1]
            first, *rest = [v.strip(" `") for v in cell.split(",")]
            named.add(first.removeprefix("SAGASTREAM_").lower())
            named |= {v.removeprefix("_").lower() for v in rest}
    assert set(Settings.model_fields) - named == set()
