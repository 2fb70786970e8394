"""Tests of `mailbag docs`. `asyncapi-3.0.0.json` is the official AsyncAPI 3.0.0 JSON
Schema, bundled with its bindings, as published in github.com/asyncapi/spec-json-schemas
(`schemas/3.0.0.json`, Apache License 2.0), unchanged."""
