"""Prints the admin API's OpenAPI document (``make openapi`` writes docs/openapi.json)."""

from __future__ import annotations

import json
import sys

from fedstream_scheduler.api import build_api


def document() -> str:
    return json.dumps(build_api({}).openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
