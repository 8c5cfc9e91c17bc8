"""`loomctl doctor` recommends the catalogue's tool-capable LLM by RAM (the RAM size is the
hardware edge: a fake /proc/meminfo in a tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomd.doctor import Status, all_checks, load_context
from loomd.router.doctor import check_llm_choice


def _ctx(tmp_path: Path, ram_kb: int, model: str, enabled: str = "true") -> object:
    root = tmp_path / "hw"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text(f"MemTotal:       {ram_kb} kB\nMemFree:  1000 kB\n")
    cfg = tmp_path / "loomd.toml"
    cfg.write_text(
        f'[paths]\nstate_dir = "{tmp_path}/state"\n[llm]\nenabled = {enabled}\nmodel = "{model}"\n'
    )
    return load_context(cfg, f"ipc://{tmp_path}/none.sock", hw_root=root)


SMOL = "llm/SmolLM2-135M-Instruct.gguf"
QWEN = "llm/qwen2.5-1.5b-instruct-q4_k_m.gguf"


@pytest.mark.parametrize(
    ("ram_kb", "model", "status", "says"),
    [
        (4 * 1024 * 1024, SMOL, Status.WARN, "qwen2.5-1.5b-instruct"),  # a 4 GB Pi 5
        (2 * 1024 * 1024, SMOL, Status.WARN, "qwen2.5-1.5b-instruct"),  # exactly 2 GB
        (1024 * 1024, SMOL, Status.OK, "needs more RAM"),  # a 1 GB Pi 3
        (8 * 1024 * 1024, QWEN, Status.OK, "tool-capable"),  # already chosen
    ],
)
def test_recommends_by_ram(
    tmp_path: Path, ram_kb: int, model: str, status: Status, says: str
) -> None:
    v = check_llm_choice(_ctx(tmp_path, ram_kb, model))  # type: ignore[arg-type]
    assert v.status == status, v
    assert says in v.finding
    if status == Status.WARN:
        assert v.fix.startswith("loomctl models fetch qwen2.5-1.5b-instruct")
        assert QWEN in v.fix


def test_skips_when_the_llm_is_off(tmp_path: Path) -> None:
    v = check_llm_choice(_ctx(tmp_path, 4 << 20, SMOL, enabled="false"))  # type: ignore[arg-type]
    assert v.status == Status.SKIP
    assert "llm model" in {c.name for c in all_checks()}
