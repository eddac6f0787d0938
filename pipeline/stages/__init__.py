"""The DVC stages' mains, one module per stage of dvc.yaml (`download`, `prepare`, `train`,
`evaluate`), each run as `python -m pipeline.stages.<stage>`, plus `offline_plots`, the set-up
step `make install` runs (not a DVC stage).

A stage reads its inputs, calls the core functions of the other folders, writes its outputs.
Nothing in `pipeline/` imports a stage but the sweep, which trains the way `train` does.
"""
