"""A hyperparameter sweep of one variant with Ray Tune (`python -m pipeline.sweep`, not a DVC
stage): `settings` (the `sweep:` section of params.yaml), `space` (the search space without Ray),
`trial` (one trial in a Ray worker), `record` (what the driver records) and `driver` (the
command line and the Tune run).

May import everything else in `pipeline/`; nothing imports it, so editing it leaves every DVC
stage up to date.
"""
