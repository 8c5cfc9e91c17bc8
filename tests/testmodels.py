"""Where the tests find the small real models (whisper tiny.en, a Piper voice, openWakeWord,
SmolLM2, a tiny random GGUF), and what a test does when they are missing.

`scripts/fetch-test-models` puts them in `${XDG_CACHE_HOME:-~/.cache}/loomd-test-models`
(`scripts/setup --dev` runs it); `$LOOMD_TEST_MODELS` names another folder. A test that needs
them is marked `models` or asks `require()`: without them it is skipped with one reason, which
the summary counts in one line; with `$LOOMD_REQUIRE_TEST_MODELS` set (CI) it fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.harness import small_models_dir

ENV = "LOOMD_TEST_MODELS"
REQUIRE_ENV = "LOOMD_REQUIRE_TEST_MODELS"
MISSING = "test models missing"  # the skip reason starts with this

MODELS: Path = small_models_dir()
TINY = MODELS / "llm" / "tiny-random.gguf"
SMOLLM = MODELS / "llm" / "SmolLM2-135M-Instruct.gguf"


def available() -> bool:
    return (MODELS / "models.json").is_file()


def require(*files: Path) -> Path:
    """The models folder; skip the test (fail it under $LOOMD_REQUIRE_TEST_MODELS) when the
    folder or one of `files` is missing."""
    absent = [str(f) for f in files if not f.exists()]
    if available() and not absent:
        return MODELS
    what = ", ".join(absent) if available() and absent else f"{MODELS}/models.json"
    reason = f"{MISSING}: no {what} (scripts/fetch-test-models; scripts/setup --dev runs it)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
