"""Every picture the README shows is in the repository, a PNG, with the script that refreshes
the console's from the browser test naming each of them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def test_every_readme_image_is_a_png_in_the_repository() -> None:
    shown = IMAGE.findall((ROOT / "README.md").read_text())
    assert "docs/img/console-overview.png" in shown
    for path in shown:
        assert (ROOT / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_the_screenshot_script_refreshes_every_console_picture() -> None:
    script = (ROOT / "scripts" / "readme-screenshots").read_text()
    shown = IMAGE.findall((ROOT / "README.md").read_text())
    console = {
        p.removeprefix("docs/img/console-").removesuffix(".png") for p in shown if "console-" in p
    }
    declared = set(re.findall(r"\[([\w-]+)\]=", script))
    assert console == declared
