"""How a version becomes champion, in one place: `scoring` (every variant's validation and test
scores, the choice by validation), `handoff` (the chosen variant's version: its tags, the gate's
inputs, the records `evaluate` writes), `registry` (the MLflow registry: versions, tags, aliases,
the gate) and `promotion` (registering through the gate, then one champion across machines).

May import the base and `pipeline.model`; `pipeline.stages.evaluate` and `serving.tools.package`
import it. A change to how the champion is chosen goes here.
"""
