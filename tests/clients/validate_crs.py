#!/usr/bin/env python3
"""Validate custom resources against the CRDs' openAPIV3Schema (what the API
server checks at admission, less CEL rules), with the jsonschema package.

usage: validate_crs.py CRD_DIR FILE_OR_DIR...
Prints one JSON line per object: {"file", "kind", "name", "errors": [...]},
each error as "<path>: <message>" (path like spec.protocol.amqp).
"""
import json
import pathlib
import sys

import jsonschema
import yaml


def to_json_schema(node):
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema: `nullable` becomes a
    null type; x-kubernetes-* extensions are dropped."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def load_crds(crd_dir):
    schemas = {}
    for path in sorted(pathlib.Path(crd_dir).glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = to_json_schema(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def files(args):
    for arg in args:
        p = pathlib.Path(arg)
        if p.is_dir():
            yield from sorted(p.glob("*.yaml"))
        else:
            yield p


def main():
    schemas = load_crds(sys.argv[1])
    for path in files(sys.argv[2:]):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in schemas:
                continue
            validator = jsonschema.Draft7Validator(schemas[key])
            errors = sorted(
                f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
                for e in validator.iter_errors(doc)
            )
            print(json.dumps({
                "file": str(path),
                "kind": doc["kind"],
                "name": doc["metadata"]["name"],
                "errors": errors,
            }))


if __name__ == "__main__":
    main()
