"""``fleetgate plan``."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit
from fleetgate.cli.deploy import host_states
from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import FleetError, GpuModel, LoadedFleet, lookup_gpu
from fleetgate.kvcache import Drift
from fleetgate.models import UnknownModelError, load_model_info
from fleetgate.plan import (
    DEFAULT_VLLM,
    DeploymentPlan,
    GpuResidency,
    PlanInput,
    check_version,
    format_version,
    gpu_residency,
    memory_bar,
    plan_deployment,
    plan_input,
)
from fleetgate.plan.fromlog import NotAStartupLog, compare, plan_input_from_log, read_startup_log
from fleetgate.plan.memory import GIB
from fleetgate.plan.rules import Version
from fleetgate.plan.suggest import SEQUENCES, Suggestions
from fleetgate.plan.suggest import suggest as suggest_settings
from fleetgate.render import RenderError, source_of


class KvDtype(StrEnum):
    auto = "auto"
    fp8 = "fp8"
    fp8_e4m3 = "fp8_e4m3"
    fp8_e5m2 = "fp8_e5m2"


class HostOs(StrEnum):
    linux = "linux"
    windows = "windows"


class Quant(StrEnum):
    none = "none"
    awq = "awq"
    gptq = "gptq"
    int8 = "int8"
    fp8 = "fp8"
    bitsandbytes = "bitsandbytes"
    nvfp4 = "nvfp4"
    mxfp4 = "mxfp4"


def plan_to_dict(plan: DeploymentPlan) -> dict:
    data = dataclasses.asdict(plan)
    data["headroom_gib"] = round(plan.headroom_gib, 3)
    data["verdict"] = plan.verdict
    data["capture_short"] = plan.capture_short
    if plan.startup is not None:
        data["startup"] |= {
            "held_gib": round(plan.startup.held_gib, 3),
            "free_gib": round(plan.startup.free_gib, 3),
            "passes": plan.startup.passes,
            "max_utilization": plan.startup.max_utilization,
        }
    return data


@app.command(rich_help_panel="Plan")
def plan(
    fleet: Path | None = typer.Argument(None, help="plan every deployment of this fleet file"),
    model: str | None = typer.Option(
        None,
        help="plan one ad-hoc deployment of this model: a Hugging Face ORG/NAME (read from the "
        "HF cache, the bundled catalog or the Hub; HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT "
        "apply) or a local model directory",
    ),
    config: Path | None = typer.Option(
        None, help="the model's config.json (instead of the HF cache, the catalog or the Hub)"
    ),
    revision: str | None = typer.Option(
        None, help="the Hub revision (branch, tag or commit) of --model; default main"
    ),
    gpu: str | None = typer.Option(None, help="GPU catalog name, e.g. 'RTX 3090'"),
    gpu_memory: float | None = typer.Option(
        None, help="total GPU memory in GiB (instead of --gpu)"
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None,
        min=0.01,
        max=1.0,
        help="share of GPU memory vLLM may take; default: the version's (0.92 from 0.21)",
    ),
    vllm_version: str | None = typer.Option(
        None,
        help="the vLLM version to plan for (X.Y.Z; its start-up accounting differs by version); "
        f"default {format_version(DEFAULT_VLLM)}, the default image's (with --from-log: the log's)",
    ),
    max_model_len: int | None = typer.Option(None, min=16, help="default: the model's own"),
    max_num_seqs: int | None = typer.Option(None, min=1, help="default: vLLM's (256)"),
    max_num_batched_tokens: int | None = typer.Option(
        None, min=16, help="tokens per forward pass; default: vLLM's for the GPU size"
    ),
    kv_cache_dtype: KvDtype = typer.Option(KvDtype.auto),
    quantization: Quant | None = typer.Option(
        None, help="default: the checkpoint's quantization_config, else detected from the id"
    ),
    tensor_parallel_size: int = typer.Option(1, min=1),
    enforce_eager: bool = typer.Option(False, help="no CUDA graphs"),
    enable_prefix_caching: bool = typer.Option(
        False, help="hybrid (Mamba/GDN) models keep a second state page per sequence with it"
    ),
    host_os: HostOs = typer.Option(HostOs.linux, help="the host's OS (start-up check)"),
    desktop_reserve_gib: float | None = typer.Option(
        None, min=0, help="GPU memory the desktop holds before vLLM (default: 1.0 on Windows)"
    ),
    from_log: str | None = typer.Option(
        None,
        "--from-log",
        help="a vLLM start-up log (FILE, or - for stdin): rebuild the deployment it describes "
        "and print plan and log side by side (--model/--config/--gpu where the log lacks them)",
    ),
    suggest: bool = typer.Option(
        False,
        "--suggest",
        help="a table of settings instead: per KV dtype the largest context at 1/2/4/8 "
        "sequences, the most sequences at the asked context, the fp16 cost, and the highest "
        "utilization that passes the start-up check",
    ),
    drift: bool = typer.Option(
        False,
        "--drift",
        help="with FLEET: also read each host's release in service (over its transport) and "
        "show the KV tokens its deploy planned and vLLM reported; over 10% off is a warning",
    ),
    ssh_config: Path | None = typer.Option(None, "--ssh-config", help="for --drift: ssh -F"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Will it fit? Weights, activation, overhead and KV cache per GPU, as vLLM accounts them.

    Give a FLEET file to plan each deployment, or --model with --gpu/--gpu-memory for one
    ad-hoc deployment (vLLM's defaults for what is not given; --host-os and
    --desktop-reserve-gib for what else holds the GPU). Exit 1 if anything does not fit or
    will not pass vLLM's start-up free-memory check. --suggest prints a table of settings
    instead; --from-log sets a plan beside a real vLLM start-up log; --drift sets each plan
    beside what the running deployment's vLLM reported. Every plan names the vLLM version and
    model runner it assumed.
    """
    if from_log is not None:
        if fleet is not None:
            err_console.print("[red]error:[/] give a FLEET file or --from-log (not both)")
            raise typer.Exit(2)
        _plan_from_log(from_log, model, config, revision, gpu, gpu_memory, vllm_version, as_json)
        return
    if (fleet is None) == (model is None):
        err_console.print("[red]error:[/] give a FLEET file or --model (not both)")
        raise typer.Exit(2)
    if drift and fleet is None:
        err_console.print("[red]error:[/] --drift reads a FLEET file's hosts: give FLEET")
        raise typer.Exit(2)
    in_service: dict[str, tuple[str, Drift]] = {}
    specs: list[PlanInput] = []
    shared: list[GpuResidency] = []
    try:
        if fleet is not None:
            loaded = load_or_exit(fleet, strict_env=False)
            specs = [plan_input(loaded.fleet, n) for n in loaded.fleet.deployments]
            shared = [g for g in gpu_residency(loaded.fleet) if len(g.budgets) > 1]
            if drift:
                in_service = _in_service(loaded, fleet, ssh_config)
            forced = _version(vllm_version)
            if forced is not None:  # "what if I upgrade": instead of each image's tag
                specs = [dataclasses.replace(s, vllm_version=forced) for s in specs]
        else:
            assert model is not None
            known, gpu_name, memory = _gpu(gpu, gpu_memory)
            version = _version(vllm_version) or DEFAULT_VLLM
            info = load_model_info(model, config_path=config, revision=revision)
            specs = [
                PlanInput(
                    name=model,
                    model=info,
                    gpu_memory_gib=memory,
                    gpu_name=gpu_name,
                    gpu_p2p=known.p2p if known else False,
                    gpu_memory_utilization=gpu_memory_utilization,
                    max_model_len=max_model_len,
                    max_num_seqs=max_num_seqs,
                    max_num_batched_tokens=max_num_batched_tokens,
                    kv_cache_dtype=kv_cache_dtype.value,
                    quantization=quantization.value if quantization else None,
                    tensor_parallel_size=tensor_parallel_size,
                    enforce_eager=enforce_eager,
                    vllm_version=version,
                    gpu_arch=known.arch if known else "",
                    host_os=host_os.value,
                    desktop_reserve_gib=desktop_reserve_gib,
                    enable_prefix_caching=enable_prefix_caching,
                )
            ]
        if suggest:
            _print_suggestions([suggest_settings(spec) for spec in specs], as_json)
            return
        plans = [plan_deployment(spec) for spec in specs]
    except (UnknownModelError, KeyError) as exc:
        err_console.print(f"[red]error:[/] {exc.args[0]}")
        raise typer.Exit(1) from None
    except FleetError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error:[/] {problem.format(exc.file)}")
        raise typer.Exit(1) from None

    if as_json:
        out = [plan_to_dict(p) for p in plans]
        for data, p in zip(out, plans, strict=True):
            if p.name in in_service:
                release, d = in_service[p.name]
                data["in_service"] = {"release": release, **d.to_json(), "warning": d.warning}
        print(json.dumps(out, indent=2))
    else:
        for p in plans:
            _print_plan(p, in_service.get(p.name))
        for g in shared:
            _print_residency(g)
    if not all(p.fits for p in plans) or not all(
        g.fits(g.always_on) and not g.never_fit() for g in shared
    ):
        raise typer.Exit(1)


def _in_service(
    loaded: LoadedFleet, fleet: Path, ssh_config: Path | None
) -> dict[str, tuple[str, Drift]]:
    """Each deployment's KV tokens as the deploy of its host's release in service recorded
    them (planned then, reported by vLLM): read through deploy, never planned here."""
    try:
        source = source_of(loaded)
    except RenderError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    hosts = sorted({d.host for d in loaded.fleet.deployments.values()})
    found: dict[str, tuple[str, Drift]] = {}
    for host, state in host_states(source, hosts, fleet_path=fleet, ssh_config=ssh_config).items():
        if isinstance(state, FleetgateError):
            err_console.print(f"[yellow]warning:[/] {host}: its releases were not read: {state}")
            continue
        current = state.release(state.current) if state.current else None
        if current is None:
            continue
        for name, d in current.kv_cache.items():
            found[name] = (current.name, d)
    return found


def _gpu(gpu: str | None, gpu_memory: float | None) -> tuple[GpuModel | None, str, float]:
    """--gpu NAME or --gpu-memory GIB, exactly one: (catalog entry, name, GiB)."""
    if (gpu is None) == (gpu_memory is None):
        err_console.print("[red]error:[/] give --gpu NAME or --gpu-memory GIB")
        raise typer.Exit(2)
    try:
        known = lookup_gpu(gpu) if gpu else None
    except KeyError as exc:
        message = exc.args[0].replace("give memory_gib and arch", "use --gpu-memory GIB")
        err_console.print(f"[red]error:[/] {message}")
        raise typer.Exit(1) from None
    if known:
        return known, known.name, known.memory_gib
    return None, f"{gpu_memory:g} GiB", float(gpu_memory or 0)


def _version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return check_version(text)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] --vllm-version: {exc}")
        raise typer.Exit(2) from None


def _plan_from_log(
    source: str,
    model: str | None,
    config: Path | None,
    revision: str | None,
    gpu: str | None,
    gpu_memory: float | None,
    vllm_version: str | None,
    as_json: bool,
) -> None:
    """``plan --from-log``: the deployment a real start-up log describes, planned beside it."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(errors="replace")
    except OSError as exc:
        err_console.print(f"[red]error:[/] cannot read {source}: {exc.strerror}")
        raise typer.Exit(1) from None
    try:
        log = read_startup_log(text)
    except NotAStartupLog as exc:
        err_console.print(f"[red]error:[/] {source}: {exc}")
        raise typer.Exit(1) from None
    forced = _version(vllm_version)
    if forced is not None:
        log.version = format_version(forced)
    model_id = model or log.model
    if model_id is None and config is None:
        err_console.print(
            f"[red]error:[/] {source} does not name the model: give --model ORG/NAME or --config"
        )
        raise typer.Exit(2)
    if gpu is None and gpu_memory is None and log.total_gib is not None:
        known, gpu_name, memory = None, f"{log.total_gib:g} GiB (from the log)", log.total_gib
    elif gpu is None and gpu_memory is None:
        err_console.print(
            f"[red]error:[/] {source} does not state the GPU's memory: give --gpu NAME or "
            "--gpu-memory GIB"
        )
        raise typer.Exit(2)
    else:
        known, gpu_name, memory = _gpu(gpu, gpu_memory)
    try:
        info = load_model_info(model_id or "model", config_path=config, revision=revision)
    except UnknownModelError as exc:
        hint = "" if model else " (the log's model; give --model ORG/NAME or --config PATH)"
        err_console.print(f"[red]error:[/] {exc.args[0]}{hint}")
        raise typer.Exit(1) from None
    spec, unmodelled = plan_input_from_log(
        log, info, gpu_memory_gib=memory, gpu_name=gpu_name, gpu_p2p=bool(known and known.p2p)
    )
    if log.device == "cpu" and log.available_kv_gib is not None:
        # the CPU backend takes VLLM_CPU_KVCACHE_SPACE as is: no profile to predict
        spec = dataclasses.replace(spec, kv_cache_memory_bytes=int(log.available_kv_gib * GIB))
        unmodelled.append("CPU backend: the KV space is VLLM_CPU_KVCACHE_SPACE, taken from the log")
    planned = plan_deployment(spec)
    terms = compare(planned, log)
    if as_json:
        out = {
            "log": dataclasses.asdict(log),
            "plan": plan_to_dict(planned),
            "terms": [
                dataclasses.asdict(t) | {"difference": t.difference, "relative": t.relative}
                for t in terms
            ],
            "not_modelled": unmodelled,
        }
        print(json.dumps(out, indent=2, default=str))
        return
    console.rule(f"plan vs log: [bold]{planned.model}[/]", align="left")
    console.print(f"on {planned.gpu}; assumes {planned.engine}", highlight=False)
    table = Table(box=None, pad_edge=False)
    for column in ("term", "plan", "log", "difference"):
        table.add_column(column, justify="left" if column == "term" else "right")
    for t in terms:
        if t.name == "starts":
            fmt = {None: "—", 1.0: "yes", 0.0: "no"}
            table.add_row(
                t.name,
                fmt[t.planned],
                fmt[t.logged],
                "agree" if (t.logged is None or t.logged == t.planned) else "[red]DISAGREE[/]",
            )
            continue
        digits = 0 if t.unit == "tokens" else 2
        diff = "" if t.difference is None else f"{t.difference:+,.{digits}f}"
        if t.relative is not None:
            diff += f" ({t.relative:+.1%})"
        table.add_row(
            f"{t.name} ({t.unit})" if t.unit else t.name,
            _cell(t.planned, digits),
            _cell(t.logged, digits),
            diff,
        )
    console.print(table)
    for note in [*unmodelled, *planned.notes]:
        console.print(f"note: {note}", highlight=False)


def _print_suggestions(all_suggestions: list[Suggestions], as_json: bool) -> None:
    if as_json:
        out = []
        for sug in all_suggestions:
            data = dataclasses.asdict(sug)
            data.pop("plan")
            out.append(data)
        print(json.dumps(out, indent=2))
        return
    for sug in all_suggestions:
        console.rule(f"settings for [bold]{sug.name}[/]", align="left")
        console.print(f"{sug.model} on {sug.gpu}; assumes {sug.engine}", highlight=False)
        table = Table(box=None, pad_edge=False)
        table.add_column("KV dtype")
        table.add_column("KV tokens", justify="right")
        for n in SEQUENCES:
            table.add_column(f"context @{n} seq{'s' if n > 1 else ''}", justify="right")
        table.add_column(f"seqs @{sug.max_model_len}", justify="right")
        for o in sug.options:
            table.add_row(
                o.kv_cache_dtype,
                f"{o.kv_cache_tokens:,}",
                *(f"{o.largest_context[n]:,}" for n in SEQUENCES),
                str(o.most_sequences),
            )
        console.print(table)
        fp8 = next(o for o in sug.options if o.kv_cache_dtype == "fp8")
        share = sug.fp16_cost_tokens / fp8.kv_cache_tokens if fp8.kv_cache_tokens else 0
        console.print(
            f"fp16 (auto) instead of fp8 costs {sug.fp16_cost_tokens:,} KV tokens ({share:.0%})",
            highlight=False,
        )
        console.print(
            f"highest gpu_memory_utilization that passes the start-up check: "
            f"{sug.max_utilization} ({sug.tokens_at_max_utilization:,} KV tokens there)",
            highlight=False,
        )


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _print_plan(p: DeploymentPlan, in_service: tuple[str, Drift] | None = None) -> None:
    color = "green" if p.verdict == "fits" else ("yellow" if p.fits else "red")
    verdict = f"[{color}]{p.verdict}[/]"
    console.rule(f"{verdict}: [bold]{p.name}[/]", align="left")
    console.print(f"{p.model} on {p.gpu} ({p.gpu_memory_gib:.2f} GiB)", highlight=False)
    console.print(f"assumes {p.engine}", highlight=False)
    console.print(memory_bar(p))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        (
            "budget",
            f"{p.budget_gib:.2f} GiB = {p.gpu_memory_utilization} x {p.gpu_memory_gib:.2f}"
            f" GiB (tp {p.tensor_parallel_size})",
        ),
        ("model", p.model_source or "bundled catalog"),
        (
            "weights",
            f"{p.weights_gib:.2f} GiB ({p.quantization}; "
            f"{'safetensors headers' if p.weights_exact else 'from the shapes'})",
        ),
        (
            "activation",
            f"{p.activation_gib:.2f} GiB (profile pass of "
            f"{p.max_num_batched_tokens} tokens, {p.max_num_seqs} seqs"
            + (
                f"; cold torch.compile scratch {p.compile_scratch_gib:.2f})"
                if p.compile_scratch_gib
                else ")"
            ),
        ),
        (
            "overhead",
            f"{p.overhead_gib:.2f} GiB (non-torch {p.non_torch_gib:.2f}; "
            + (
                f"V2 sampler buffers {p.runner_buffers_gib:.2f}; "
                if p.runner_buffers_gib >= 0.005
                else ""
            )
            + "CUDA graphs "
            f"{p.cudagraph_gib:.2f}, {p.cudagraph_term})",
        ),
        (
            "KV cache",
            (
                f"{p.available_kv_gib:.2f} GiB, {p.kv_bytes_per_token // 1024} KiB/token "
                f"({p.kv_cache_dtype}) = {p.kv_cache_tokens:,} tokens"
            )
            if p.available_kv_gib > 0
            else f"none: the budget is {-p.available_kv_gib:.2f} GiB short",
        ),
        ("context", f"max_model_len {p.max_model_len}; largest that fits {p.max_model_len_fit}"),
        (
            "concurrency",
            f"{p.max_concurrency:.2f}x requests of {p.max_model_len} tokens "
            f"(max_num_seqs {p.max_num_seqs})",
        ),
    ]
    if p.fp16_fallback:
        fb = p.fp16_fallback
        rows.append(
            (
                "fp16 fallback",
                (
                    f"kv_cache_dtype auto: {fb.kv_cache_tokens:,} tokens "
                    f"({fb.kv_cache_tokens - p.kv_cache_tokens:+,}), largest context "
                    f"{fb.max_model_len_fit}, {fb.max_concurrency:.2f}x requests of "
                    f"{p.max_model_len} "
                    f"— {'still fits' if fb.fits else 'does NOT fit'}"
                ),
            )
        )
    if p.startup is not None:
        color = "green" if p.startup.passes else ("red" if p.startup.certain else "yellow")
        rows.append((f"[{color}]start-up check[/]", p.startup.describe()))
    capture = p.capture_check()
    if capture is not None:
        color = "yellow" if p.capture_short else "green"
        rows.append((f"[{color}]graph capture[/]", capture))
    if in_service is not None:
        release, d = in_service
        text = f"release {release}: {d.describe()}"
        if d.planned_tokens is not None and d.planned_tokens != p.kv_cache_tokens:
            text += f"; the plan now: {p.kv_cache_tokens:,}"
        label = "[yellow]warning: drift[/]" if d.warning else "in service"
        rows.append((label, escape(text)))
    for note in p.notes:
        rows.append(("note", note))
    for reason in p.reasons:
        rows.append(("[red]why[/]", reason))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _print_residency(g: GpuResidency) -> None:
    """Which of a shared GPU's deployments can be awake together."""
    sets = g.resident_sets()
    ok = g.fits(g.always_on) and not g.never_fit()
    verdict = "[green]shared[/]" if ok else "[red]over-committed[/]"
    console.rule(f"{verdict}: [bold]GPU {g.gpu} of {g.host}[/]", align="left")
    console.print(
        f"{g.room_gib:.2f} GiB for vLLM budgets; "
        + ", ".join(
            f"{d} {g.budgets[d]:.2f}" + ("" if d in g.on_demand else " (always on)")
            for d in g.budgets
        ),
        highlight=False,
    )
    always = list(g.always_on)
    for combo in sets:
        names = " + ".join([*always, *combo])
        console.print(f"  resident together: {names} = {g.used_gib([*always, *combo]):.2f} GiB")
    for name in g.never_fit():
        console.print(f"  [red]never fits[/]: {name} ({g.budgets[name]:.2f} GiB)")
