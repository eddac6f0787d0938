"""The service's settings come from the environment, checked, with defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import Declared, Settings


def test_defaults_and_overrides() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env(
        {"MAX_IMAGES": "3", "MAX_BODY_BYTES": "1024", "MODEL_THREADS": "0"}
    )
    assert (settings.max_images, settings.max_body_bytes, settings.model_threads) == (3, 1024, 0)


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


@pytest.mark.parametrize(
    ("name", "attribute"), [("ACCESS_LOG", "access_log"), ("TRACING", "tracing")]
)
@pytest.mark.parametrize(
    ("text", "on"), [("", False), ("0", False), ("1", True), ("true", True), ("False", False)]
)
def test_the_access_log_and_tracing_are_off_unless_asked_for(name, attribute, text, on) -> None:
    assert getattr(Declared.from_env({name: text} if text else {}), attribute) is on


def test_a_bad_access_log_switch_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"ACCESS_LOG must be 1 \(on\) or 0 \(off\), got 'yes'"):
        Declared.from_env({"ACCESS_LOG": "yes"})


def _bento(root: Path, *tags: str) -> Path:
    """A folder laid out as BentoML lays out a built bento: bento.yaml at the root, code in src/."""
    (root / "src" / "serving").mkdir(parents=True)
    models = "".join(f"  - tag: {tag}\n    module: serving.service\n" for tag in tags)
    (root / "bento.yaml").write_text(
        "service: serving.service:Classifier\nmodels: []\nspec: 2\n"
        f"services:\n- name: classifier\n  models:\n{models}"
    )
    return root


def test_a_built_bento_serves_the_model_it_packs_without_being_told(tmp_path: Path) -> None:
    root = _bento(tmp_path / "bento", "digits-classifier:v7")
    assert Declared.from_env({}, bento_root=root).model_tag == "digits-classifier:v7"
    told = Declared.from_env({"BENTO_MODEL": "other:v1"}, bento_root=root)
    assert told.model_tag == "other:v1"


def test_a_checkout_or_an_ambiguous_bento_falls_back_to_the_default_name(tmp_path: Path) -> None:
    default = "fashion-mnist-classifier:latest"
    assert Declared.from_env({}, bento_root=tmp_path).model_tag == default
    two = _bento(tmp_path / "two", "a:v1", "b:v2")
    assert Declared.from_env({}, bento_root=two).model_tag == default
