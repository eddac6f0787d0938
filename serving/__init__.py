"""The BentoML service and the image preprocessing that turns uploads into model input: what a
serving process imports (`serving.service:Classifier`). Offline tools that package a model or
report drift live in `serving/tools/`, which nothing here imports.
"""
