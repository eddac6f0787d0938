"""A BentoML service with one endpoint and no model: what `bentoml serve` itself takes to start.

`bench/serve_load.py` starts it before ours, with as many workers (SERVING_WORKERS), and reports
its time to `/readyz` beside ours: the part of ours' ready time that is BentoML's own (its
command line, its SDK's imports in the serving process and in every worker, the process manager)
and not the service's.
"""

from __future__ import annotations

import os

import bentoml


@bentoml.service(name="bare", workers=int(os.environ.get("SERVING_WORKERS", "1")))
class Bare:
    @bentoml.api
    def echo(self, text: str) -> str:
        return text
