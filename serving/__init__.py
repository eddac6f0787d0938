"""The BentoML service and the image preprocessing that turns uploads into model input."""
