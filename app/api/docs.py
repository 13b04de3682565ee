"""GET /docs: the browsable API reference, Swagger UI rendering /openapi.yaml (app/openapi.yaml).

The Swagger UI assets come from the PyPI package swagger-ui-bundle and are served by this app
(GET /docs/<asset>): the page loads nothing from anywhere else, so it works on a host without
internet, and its Content-Security-Policy says so (scripts, styles, images and fetches from this
origin only). Like /openapi.yaml, the page needs no key; "Try it out" sends the X-API-Key entered
under "Authorize".
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import falcon
from swagger_ui_bundle import swagger_ui_path

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"
# The document's example server ("servers:" of app/openapi.yaml), which "Try it out" replaces.
DOCUMENTED_SERVER = re.search(r"^servers:\n\s+- url: (\S+)$", OPENAPI_FILE.read_text(), re.MULTILINE).group(1)

# The assets the page loads: name -> content type. Nothing else of the package is served.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "docs-init.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
PATHS = frozenset({"/docs", *(f"/docs/{name}" for name in ASSETS)})

# Relative URLs: the page also works behind a proxy that serves the API under a path prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>position-manager API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
  <style>body { margin: 0; background: #fafafa; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/docs-init.js"></script>
</body>
</html>
"""
# No online validator (it would call out of the page), no top bar to load other documents. "Try it
# out" goes to the server that serves this page, not to the document's example server.
INIT = """(function () {
  var documented = %s;
  var here = window.location.href.replace(/\\/docs([?#].*)?$/, "");
  window.ui = SwaggerUIBundle({
    url: "openapi.yaml",
    dom_id: "#swagger-ui",
    deepLinking: true,
    layout: "BaseLayout",
    validatorUrl: null,
    docExpansion: "list",
    persistAuthorization: false,
    requestInterceptor: function (request) {
      if (request.url.indexOf(documented) === 0) {
        request.url = here + request.url.slice(documented.length);
      }
      return request;
    }
  });
})();
""" % json.dumps(DOCUMENTED_SERVER)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _read(name: str) -> bytes:
    return INIT.encode() if name == "docs-init.js" else (swagger_ui_path / name).read_bytes()


class DocsResource:
    """GET /docs and GET /docs/{name}: the page and its assets, read once."""

    def __init__(self):
        self.assets = {name: _read(name) for name in ASSETS}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("Cache-Control", "no-cache")
        resp.text = PAGE

    def on_get_asset(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in self.assets:
            raise falcon.HTTPNotFound()
        resp.content_type = ASSETS[name]
        resp.set_header("Cache-Control", "public, max-age=86400")
        resp.data = self.assets[name]
