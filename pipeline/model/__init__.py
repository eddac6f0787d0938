"""The network and everything that turns one into a served file: architectures (`architectures`,
with `layers` and `losses`), training (`fitting`, `distribute`, `devices`), temperature scaling
(`calibration`) and the ONNX export with its int8 rule (`onnx_export`).

May import the base (`pipeline.config`, `pipeline.tracking`) and `pipeline.data`; the stages, the
champion's scoring, the sweep and the packaging tool import it. A new architecture goes in
`architectures.py` (and its config in `pipeline/config.py`).
"""
