#!/usr/bin/env python3
"""Strict validation of prometheus-operator objects (PodMonitor,
PrometheusRule) against the CRD schema, for tests/install.

kubernetes-validate knows only the built-in kinds. The schema here comes
from the CRD models of PyPI's cloudcoil-models-prometheus-operator
(generated from prometheus-operator's CRDs: types, enums, patterns);
every object schema is closed (additionalProperties: false) where the
models leave it open, so an unknown or misspelt field is an error, as
`kubectl apply` with strict field validation makes it.

Usage: validate_crds.py FILE...  (multi-document YAML). Prints one line per
monitoring.coreos.com object, "PASS FILE kind/name" or "ERROR FILE
kind/name: where: what", and exits 1 on any error, 2 when the models are
missing.
"""
import sys

try:
    import jsonschema
    import yaml
    from cloudcoil.models.prometheus_operator import v1
except ImportError as e:  # pragma: no cover - reported to the test
    print(f"ERROR missing Python package ({e}): run .ci/k8s-tools", file=sys.stderr)
    sys.exit(2)

MODELS = {"PodMonitor": v1.PodMonitor, "PrometheusRule": v1.PrometheusRule}


def close(node):
    """The models' schema made strict: additionalProperties: false on every
    object schema that lists properties and says nothing about others, and
    "anyOf: [schema, null]" (every optional field) reduced to the schema,
    so an error names the key at fault instead of "not of type null"."""
    if isinstance(node, dict):
        options = node.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            del node["anyOf"]
            node.update(next(o for o in options if o != {"type": "null"}))
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            close(v)
    elif isinstance(node, list):
        for v in node:
            close(v)
    return node


def validator(kind):
    schema = close(MODELS[kind].model_json_schema(by_alias=True))
    return jsonschema.Draft202012Validator(schema)


def deepest(error):
    """The innermost cause of an error under anyOf/oneOf."""
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return error


def main(paths):
    validators = {}
    failed = False
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if not str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
                continue
            kind = doc.get("kind")
            name = f"{path} {kind}/{doc.get('metadata', {}).get('name')}"
            if doc.get("apiVersion") != "monitoring.coreos.com/v1" or kind not in MODELS:
                print(f"ERROR {name}: no schema for {doc.get('apiVersion')} {kind}")
                failed = True
                continue
            v = validators.setdefault(kind, validator(kind))
            errors = sorted(
                (deepest(e) for e in v.iter_errors(doc)), key=lambda e: list(e.absolute_path)
            )
            for e in errors:
                where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                print(f"ERROR {name}: {where}: {e.message}")
            if errors:
                failed = True
            else:
                print(f"PASS {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
