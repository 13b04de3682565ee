"""GET /docs, the browsable API reference: served by the app from app/openapi.yaml with the Swagger
UI assets of the swagger-ui-bundle package, rendered by Debian's headless Chromium from a real
gunicorn with every host but this one unresolvable (so nothing may come from a CDN); the DOM must
list every operation of the document and a screenshot must show the operations' method badges."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import yaml

from app.api import docs
from tests.api.conftest import API_KEY, server_environ

# Swagger UI's colours of the method badges (swagger-ui.css, .opblock-<method> .opblock-summary-method).
BADGE_COLOURS = {"get": (0x61, 0xAF, 0xFE), "post": (0x49, 0xCC, 0x90), "patch": (0x50, 0xE3, 0xC2),
                 "delete": (0xF9, 0x3E, 0x3E)}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The flags that let Chromium start here as root without trying to reach the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                  "--virtual-time-budget=20000")


def document_operations() -> set[tuple[str, str]]:
    document = yaml.safe_load(docs.OPENAPI_FILE.read_text())
    return {(method, path) for path, item in document["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")}


def chromium() -> str:
    """Debian's chromium (bin/bootstrap installs it when missing and it can), or PM_CHROMIUM."""
    given = os.environ.get("PM_CHROMIUM")
    found = given or next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    if not found:
        pytest.fail("no Chromium to render /docs: bin/bootstrap installs Debian's chromium (apt-get, as root); "
                    "or set PM_CHROMIUM to a Chromium binary")
    return found


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"   # a fresh one per run
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=180, check=True)


def read_png(path: Path) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows, bytes per pixel) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):       # undo the row filter (PNG spec, section 9)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def colour_counts(rows: list[bytes], bpp: int) -> dict[tuple[int, int, int], int]:
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for i in range(0, len(row), bpp):
            pixel = (row[i], row[i + 1], row[i + 2])
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts


def test_docs_page_and_assets_need_no_key_and_load_nothing_from_elsewhere(make_app, api_settings):
    from falcon import testing
    client = testing.TestClient(make_app(api_settings))     # no X-API-Key
    page = client.simulate_get("/docs")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "//" not in page.text and "http" not in page.text            # relative URLs only
    for name, content_type in docs.ASSETS.items():
        asset = client.simulate_get(f"/docs/{name}")
        assert asset.status_code == 200 and asset.headers["Content-Type"] == content_type, name
        assert len(asset.content) > 0
    assert 'url: "openapi.yaml"' in client.simulate_get("/docs/docs-init.js").text
    assert client.simulate_get("/docs/swagger-ui-bundle.js").content.startswith(b"/*!")
    # nothing else of the package (or of the disk) is served, and other paths keep their key
    assert client.simulate_get("/docs/index.html").status_code == 401
    assert client.simulate_get("/docs/index.html", headers={"X-API-Key": API_KEY}).status_code == 404
    assert client.simulate_get("/docs/..%2Fopenapi.yaml", headers={"X-API-Key": API_KEY}).status_code == 404


@pytest.mark.slow
def test_headless_chromium_renders_every_operation(start_server, settings, tmp_path):
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="1"))
    url = server.url + "/docs"

    # the DOM after Swagger UI ran: one operation block per operation of the document
    dom = run_chromium(tmp_path, "--dump-dom", url).stdout.decode()
    operations = document_operations()
    assert ("delete", "/api/v1/positions/{asset}") in operations and len(operations) > 20
    for method, path in sorted(operations):
        assert f'data-path="{path}"' in dom, f"{method.upper()} {path} is not on the page"
    assert dom.count('class="opblock opblock-') == len(operations)

    # the screenshot: the page is drawn, with the badges of GET, POST, PATCH and DELETE operations
    shot = tmp_path / "docs.png"
    run_chromium(tmp_path, "--window-size=1280,1800", f"--screenshot={shot}", url)
    width, height, rows, bpp = read_png(shot)
    assert (width, height) == (1280, 1800)
    counts = colour_counts(rows, bpp)
    background = max(counts.values())
    assert background < width * height * 0.9, "the page is (almost) one colour: nothing was rendered"
    for method, colour in BADGE_COLOURS.items():
        # a badge is about 80 x 30 pixels of its colour; the first screen holds several of each
        assert counts.get(colour, 0) > 1500, f"no {method.upper()} badge drawn ({counts.get(colour, 0)} pixels)"
