"""Where the build outputs the server and the gateway read at run time live: inside the packages, so an installed
wheel carries them and a clone finds them at the same relative place (`make proto`, `make setup` write them).

- `service/_gen/`: the generated `embeddings.v1` modules (importable as `service._gen.embeddings.v1`), the descriptor
  set Envoy's transcoder loads, and the OpenAPI document GET /openapi.json serves (tools/genproto.py);
- `service/console/swagger-ui/`: Swagger UI's files for GET /docs (from npm's swagger-ui-dist, never a CDN).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED_PACKAGE = "service._gen"
GENERATED = PACKAGE_DIR / "_gen"
DESCRIPTOR = GENERATED / "descriptor.pb"
OPENAPI = GENERATED / "openapi.json"
SWAGGER_UI = PACKAGE_DIR / "console" / "swagger-ui"
