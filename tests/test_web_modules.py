"""The page script is ES modules: the page loads the entry as a module, and every
module it imports, directly or not, is served as JavaScript with the shipped bytes."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from test_pages import site  # noqa: F401 - the fixture: a real store behind a real server

STATIC = Path(__file__).resolve().parent.parent / "ciwatch" / "web" / "static"
IMPORT = re.compile(r'^import\s+\{[^}]*\}\s+from\s+"\./([a-z]+\.js)";', re.M)


def test_every_module_the_page_imports_is_served_as_javascript(site):  # noqa: F811
    _, url, _, _ = site
    page = requests.get(url + "/", timeout=10).text
    entry = re.search(r'<script type="module" src="/static/(ciwatch\.js)\?v=[0-9a-f]+">', page)
    assert entry, "the page does not load ciwatch.js as a module"
    seen: set[str] = set()
    todo = [entry.group(1)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        got = requests.get(f"{url}/static/{name}", timeout=10)
        assert got.status_code == 200, f"{name} is imported but not served ({got.status_code})"
        assert got.headers["content-type"].startswith("text/javascript"), name
        assert got.content == (STATIC / name).read_bytes(), name
        todo += IMPORT.findall(got.text)
    shipped = {p.name for p in STATIC.glob("*.js")}
    assert seen == shipped, f"shipped but never imported: {sorted(shipped - seen)}"
    assert len(seen) > 1
