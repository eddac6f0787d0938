"""The service's settings come from the environment, checked, with defaults."""

from __future__ import annotations

import pytest

from serving.settings import Declared, Settings


def test_defaults_and_overrides() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env({"MAX_IMAGES": "3", "MAX_BODY_BYTES": "1024", "TF_THREADS": "0"})
    assert (settings.max_images, settings.max_body_bytes, settings.tf_threads) == (3, 1024, 0)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_IMAGES": "many"}, "MAX_IMAGES must be an integer, got 'many'"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES must be a positive integer, got 0"),
        ({"MAX_BATCH_ITEMS": "-5"}, "MAX_BATCH_ITEMS must be a positive integer"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


def test_declared_settings() -> None:
    declared = Declared.from_env({"BENTO_MODEL": "m:v3", "SERVING_WORKERS": "3"})
    assert (declared.model_tag, declared.workers) == ("m:v3", 3)
    assert Declared.from_env({}).workers >= 1
    with pytest.raises(ValueError, match="SERVING_WORKERS must be a positive integer, got 'x'"):
        Declared.from_env({"SERVING_WORKERS": "x"})
