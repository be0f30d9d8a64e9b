"""The OpenLineage JSON schemas (vendored in tests/data/openlineage, see its README) and a validator of the
events icefield emits against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent / "data" / "openlineage"
FACET_SCHEMA = Path(__file__).resolve().parents[1] / "src" / "icefield" / "observe" / "schemas" / "IcefieldRunFacet.json"


def _registry() -> Registry:
    resources = []
    for path in [SCHEMAS / "OpenLineage.json", FACET_SCHEMA, *sorted((SCHEMAS / "facets").glob("*.json"))]:
        doc = json.loads(path.read_text(encoding="utf-8"))
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validate_event(event: dict[str, Any]) -> None:
    """``event`` against OpenLineage.json (RunEvent), then each facet against the schema its ``_schemaURL``
    names (every one must be a schema we have: an unknown facet fails). Raises
    :class:`jsonschema.ValidationError` or AssertionError."""
    _validator("https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent").validate(event)
    facets: list[dict[str, Any]] = [*event["run"]["facets"].values(), *event["job"]["facets"].values()]
    for ds in event["inputs"] + event["outputs"]:
        facets += [*ds.get("facets", {}).values(), *ds.get("inputFacets", {}).values(), *ds.get("outputFacets", {}).values()]
    for facet in facets:
        url = facet["_schemaURL"]
        base = url.split("#")[0]
        assert REGISTRY.get(base) is not None, f"no schema for facet {url}"
        _validator(url).validate(facet)


def _validator(ref: str) -> Draft202012Validator:
    # Formats jsonschema checks without more packages are checked too (run ids are UUIDs; date-time and uri
    # would need rfc3339-validator and rfc3987).
    return Draft202012Validator({"$ref": ref}, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)
