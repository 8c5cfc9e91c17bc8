"""The llm component's doctor checks: which catalogue model suits this board's RAM, the
cloud key, the GPU (contributed through `loomd.components.BUILTIN_DOCTOR`)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from loomd.doctor.context import GB, Check, Context, Verdict, component_on, ok, skip, warn
from loomd.errors import LoomdError


def check_llm_choice(ctx: Context) -> Verdict:
    """Which catalogue LLM suits this board's RAM: the tool-capable model the catalogue
    recommends from `min_ram_mb` up (the assist's LLM turns), SmolLM2 below. Self-contained:
    RAM from the hardware tree's /proc/meminfo, models from the shipped catalogue."""
    from loomd.models.catalogue import catalogue
    from loomd.router.settings import model_file

    llm = ctx.section("llm")
    if llm is None or not component_on(ctx, "llm")[0]:
        return skip("the llm component is off")
    try:
        text = ctx.hw("/proc/meminfo").read_text()
    except OSError as exc:
        return skip(f"cannot read the RAM size ({exc.strerror})")
    total_mb = next(
        (
            int(line.split()[1]) // 1024
            for line in text.splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    fits = sorted(
        (m for m in catalogue() if m.kind == "llm" and m.tools and 0 < m.min_ram_mb <= total_mb),
        key=lambda m: m.min_ram_mb,
    )
    configured = model_file(llm.model, ctx.models_dir)
    name = configured.name if configured is not None else "none"
    if not fits:
        return ok(f"{total_mb} MB RAM: {name} (a tool-capable model needs more RAM)")
    best = fits[-1]
    paths = {ctx.models_dir / f.path for m in fits for f in m.files}
    if configured is not None and configured in paths:
        return ok(f"{total_mb} MB RAM: {name}, a tool-capable model")
    (gguf,) = (f.path for f in best.files)
    return warn(
        f"{total_mb} MB RAM, model {name}: {best.id} ({best.bytes / GB:.1f} GB, tool calls) "
        f"fits this board (from {best.min_ram_mb} MB) and understands commands far better",
        f'loomctl models fetch {best.id}; then [llm] model = "{gguf}" in '
        f"{ctx.config_path or 'loomd.toml'}, and restart loomd",
    )


def check_cloud_key(ctx: Context) -> Verdict:
    """Whether the cloud key exists. Never reads it into the output: not the key, not its
    length, not a prefix."""
    llm = ctx.section("llm")
    if llm is None or not llm.cloud.base_url:
        return skip("no cloud configured ([llm.cloud] base_url)")
    c = llm.cloud
    places = []
    cred = ctx.env.get("CREDENTIALS_DIRECTORY")
    if cred and c.key_name:
        places.append(Path(cred) / c.key_name)
    # Outside the unit there is no $CREDENTIALS_DIRECTORY: look where LoadCredential= reads.
    places += [Path("/etc/credstore") / c.key_name, Path("/etc/loomd/credentials") / c.key_name]
    for p in places:
        try:
            if p.is_file() and p.stat().st_size > 0:
                return ok(f"key present in {p} (not shown)")
        except PermissionError:
            return ok(f"{p} exists (not readable by this user, not shown)")
    if c.key_env and ctx.env.get(c.key_env, "").strip():
        return ok(f"key present in ${c.key_env} (not shown)")
    return warn(
        f"no key for {c.base_url}: none in $CREDENTIALS_DIRECTORY/{c.key_name} or ${c.key_env}",
        f"sudo install -D -m 0600 /dev/stdin /etc/credstore/{c.key_name} (paste the key, "
        f"Ctrl-D); add LoadCredential={c.key_name} to the unit (systemctl edit loomd)",
    )


def check_gpu(ctx: Context) -> Verdict:
    devs = sorted(p.name for p in ctx.hw("dev").glob("nvhost-*"))
    smi = shutil.which("nvidia-smi") if ctx.hw_root == Path("/") else None
    if not devs and not smi:
        return skip("no GPU (no /dev/nvhost-*, no nvidia-smi)")
    found = "Jetson (" + ", ".join(devs[:3]) + ")" if devs else "NVIDIA GPU (nvidia-smi)"
    llm = ctx.section("llm")
    layers = llm.gpu_layers if llm is not None else 0
    if importlib.util.find_spec("llama_cpp") is None:
        return warn(
            f"{found}; llama-cpp-python is not installed",
            "install the CUDA flavour of loomd-llm (docs/design/packaging.md)",
        )
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return warn(
            f"{found}; this llama-cpp-python build has no GPU offload",
            "install the CUDA flavour of loomd-llm (docs/design/packaging.md)",
        )
    if layers == 0:
        return warn(
            f"{found}; the build offloads but [llm] gpu_layers = 0",
            f"set [llm] gpu_layers = 999 in {ctx.config_path or 'loomd.toml'}, then "
            "sudo systemctl restart loomd",
        )
    used = _gpu_in_use(ctx)
    return ok(f"{found}; offload build, gpu_layers = {layers}; {used}")


def _gpu_in_use(ctx: Context) -> str:
    """What the running llm component says about offload (`LlmStatus.gpu_layers`)."""
    try:
        comp = ctx.daemon_status()["components"].get("llm") or {}
    except LoomdError:
        return "daemon not running: cannot tell whether layers are offloaded"
    st = comp.get("status") or {}
    if not st.get("loaded"):
        return "the model is not loaded yet: no layers offloaded"
    layers = int(st.get("gpu_layers") or 0)
    if layers:
        return f"GPU used: {layers} layers offloaded"
    return "GPU not used: all layers on the CPU"


CHECKS = (
    Check("llm model", check_llm_choice),
    Check("cloud key", check_cloud_key),
    Check("gpu", check_gpu, 15.0),  # importing llama_cpp loads its library
)
