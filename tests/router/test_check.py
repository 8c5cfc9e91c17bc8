"""`loomd --check` names a missing or corrupt model file (read from the GGUF header only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.testmodels import TINY, require


def check(tmp_path: Path, llm: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "loomd.toml"
    cfg.write_text(f"[llm]\nenabled = true\n{llm}")
    return subprocess.run(
        [sys.executable, "-m", "loomd.daemon", "--config", str(cfg), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_names_a_missing_and_a_corrupt_model(tmp_path: Path) -> None:
    r = check(tmp_path, f'model = "{tmp_path}/nope.gguf"\n')
    assert r.returncode == 1
    assert f"problem: no model at {tmp_path}/nope.gguf: `loomctl models fetch`" in r.stdout

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all" * 100)
    r = check(tmp_path, f'model = "{bad}"\n')
    assert r.returncode == 1
    assert f"problem: model {bad} is not a valid GGUF file" in r.stdout

    r = check(tmp_path, 'model = ""\n')
    assert r.returncode == 1 and "no model configured ([llm] model)" in r.stdout

    # The default model is looked for under [paths] models_dir.
    r = check(tmp_path, f'[paths]\nmodels_dir = "{tmp_path}/models"\n')
    assert r.returncode == 1
    assert f"no model at {tmp_path}/models/llm/SmolLM2-135M-Instruct.gguf" in r.stdout


def test_check_passes_a_real_model(tmp_path: Path) -> None:
    require(TINY)
    r = check(tmp_path, f'model = "{TINY}"\n')
    assert r.returncode == 0, r.stdout
    assert "problem" not in r.stdout and "config OK" in r.stdout
