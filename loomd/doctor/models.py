"""Models: the files the configured components need, present and intact."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomd.doctor.context import (
    NOT_IN_GROUP,
    Context,
    Verdict,
    component_class,
    component_on,
    fail,
    ok,
    skip,
    warn,
)
from loomd.errors import LoomdError

# -- models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFile:
    """A model file the configuration names, and what uses it."""

    role: str  # llm, stt, tts, wake
    path: Path
    required: bool  # false: the component manages without it (Piper falls back to espeak-ng)


def configured_models(ctx: Context) -> list[ModelFile]:
    """The model files the configuration actually names, for the components that are on."""
    from loomd.router.settings import model_file

    out: list[ModelFile] = []
    llm = ctx.section("llm")
    llm_path = model_file(llm.model, ctx.models_dir) if llm is not None else None
    if llm_path is not None and component_on(ctx, "llm")[0]:
        out.append(ModelFile("llm", llm_path, True))
    voice = ctx.section("voice")
    if voice is not None and component_on(ctx, "voice")[0]:
        base = Path(voice.models_dir) if voice.models_dir else ctx.models_dir
        from loomd.audio.models import engine_files

        out += [ModelFile("stt", base / f, True)
                for f in engine_files(voice.stt.engine, voice.stt_model)]  # fmt: skip
        if voice.tts.engine == "piper" and voice.tts_voice:  # else Piper falls back to espeak-ng
            tts = base / voice.tts_voice
            out += [ModelFile("tts", tts, False), ModelFile("tts", Path(f"{tts}.json"), False)]
        wakes = [base / m for m in voice.wake.models]
        if wakes:
            d = wakes[0].parent
            out += [
                ModelFile("wake", d / "melspectrogram.onnx", True),
                ModelFile("wake", d / "embedding_model.onnx", True),
            ]
        out += [ModelFile("wake", w, True) for w in wakes]
    return out


def auto_off(ctx: Context) -> list[str]:
    """Components left "auto" that stay off for a reason other than a missing extra (their
    models are missing, say): the user installed the package and probably expects them."""
    out = []
    for name in ("llm", "voice"):
        section = ctx.section(name)
        on, why = component_on(ctx, name)
        if section is not None and section.enabled == "auto" and not on:
            from loomd.components import missing_modules

            cls = component_class(name)
            if why.startswith("cannot tell"):
                out.append(f"{name} ({section.enabled}): {why}")
            elif cls is not None and not missing_modules(cls):  # no extra: a choice
                out.append(f"{name} stays off: {why}")
    return out


def check_models(ctx: Context) -> Verdict:
    """Installed models verified against their checksums (loomd.models), and the files the
    configuration names present (and, for a GGUF, readable as one)."""
    problems, fixes, notes = [], [], []
    try:
        states = _installed(ctx.models_dir)
    except PermissionError as exc:
        return fail(
            f"may not look at {exc.filename or ctx.models_dir}",
            f"sudo adduser $USER {ctx.group}, then log out and in again (or: sudo loomctl doctor)",
        )
    if states is not None:
        bad = [s for s in states if getattr(s, "verified", "") == "bad"]
        present = [s for s in states if getattr(s, "present", False)]
        notes.append(f"{len(present)} installed in {ctx.models_dir}, {len(bad)} corrupt")
        for s in bad:
            mid = getattr(s, "id", None) or getattr(s, "model", "?")
            problems.append(f"{mid}: {getattr(s, 'problem', '') or 'checksum mismatch'}")
            fixes.append(f"loomctl models fetch {mid}")
    else:
        notes.append(f"models dir {ctx.models_dir}")
    files = configured_models(ctx)
    soft: list[str] = []
    for m in files:
        why = _model_problem(m)
        if not why:
            continue
        (problems if m.required else soft).append(
            f"{m.role}: {why}" + ("" if m.required else " (it falls back)")
        )
    fix_fetch = "loomctl models fetch (or offline: loomctl models install DIR|TARBALL)"
    if problems:
        return fail("; ".join(problems), "; ".join(dict.fromkeys([*fixes, fix_fetch])))
    soft += auto_off(ctx)
    if soft:
        return warn("; ".join(soft), fix_fetch)
    if not files and states is None:
        return skip("no component that uses models is on")
    notes.append(f"{len(files)} configured file(s) present")
    return ok(", ".join(notes))


def _installed(models_dir: Path) -> list[Any] | None:
    """`loomd.models.installed(verify=True)` when that package exists, else None."""
    if importlib.util.find_spec("loomd.models") is None:
        return None
    # Imported by name: part A's package may not be on this branch's main yet.
    fn = getattr(importlib.import_module("loomd.models"), "installed", None)
    return list(fn(models_dir, verify=True)) if fn is not None else None


def _model_problem(m: ModelFile) -> str:
    try:
        if not m.path.is_file():
            return f"{m.path} is missing"
    except PermissionError:
        return f"may not look at {m.path} ({NOT_IN_GROUP})"
    if m.path.suffix == ".gguf":
        from loomd.router.facts import read_gguf_shape

        try:
            read_gguf_shape(m.path)
        except LoomdError as exc:
            return str(exc)
    return ""
