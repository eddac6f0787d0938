"""Offline tools beside the service, never imported by a serving process: `package` (the
champion from the registry into the BentoML store, `python -m serving.tools.package`) and the
drift report (`monitor`, `python -m serving.tools.monitor`, with its statistics in `drift`).

They may import `pipeline` and `serving`; the bento (bentofile.yaml's `serving/*.py`) leaves them
out.
"""
