"""The OpenAPI document the server publishes validates as OpenAPI 3.1 and answers match it."""

import requests
from openapi_spec_validator import validate

from harness import create_project


def test_the_published_document_validates(throughline_bin, data_dir, make_server):
    create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir).start()
    resp = requests.get(f"{server.url}/api/v1/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    # Every query kind the server answers is documented, and nothing documented is missing.
    for kind in ["funnel", "trends", "retention", "sessions", "paths", "assets", "attribution", "emotion", "fatigue", "audit"]:
        path = f"/api/v1/projects/{{project}}/query/{kind}"
        assert path in doc["paths"], f"{path} undocumented"
    assert "/s/{token}" in doc["paths"], "the survey page is undocumented"
