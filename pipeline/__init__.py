"""MNIST-style image classification pipeline, by concern.

The modules here are the shared base every part uses: `config` (params.yaml as typed records,
built by `typed`), `contracts` (the files one stage hands to the next), `io` (atomic writes),
`tracking` (every MLflow tracking call, with `stopping` for signals), `environment` (the lock
files in requirements/ and whether this Python is one of them) and `figures`. The folders:
`data/` (what each dataset is, the IDX format), `model/` (architectures, training, calibration,
devices, ONNX export), `champion/` (scoring, the gate, the registry, promotion: how a version
becomes champion), `stages/` (the DVC stage mains, `python -m pipeline.stages.<stage>`) and
`sweep/` (Ray Tune, `python -m pipeline.sweep`). Imports point down that list's order: stages and
sweep use champion and model, which use data and the base; the base imports only `data`.
"""
