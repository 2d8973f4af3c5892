"""Time cnnviz and its peers against the model's own forward pass, in one process.

Every case runs on the same inputs (the bundled sample photos, tiled to the batch size, 224×224)
with a fixed thread count. The yardstick is the model's plain forward under ``torch.no_grad()``;
each case is reported as its median time and as a multiple of the yardstick measured in the same
rounds (cases of one model and batch are interleaved in shuffled order, so load drift on a shared
machine hits them alike). Peak memory is measured per case in a fresh subprocess
(``--measure-memory CASE``): the high-water mark of resident memory (CPU; reset through
``/proc/self/clear_refs``) or ``torch.cuda.max_memory_allocated`` (CUDA) during the call, minus
the level after the model, the input and the libraries are loaded. It is reported as the extra
memory of the case and as a multiple of the plain forward's extra memory.

    python benchmarks/run.py                     # full table (tens of minutes on 2 cores)
    python benchmarks/run.py --quick             # batch 8, 3 repeats, no memory, no slow cases
    python benchmarks/run.py --json out.json --markdown benchmarks/RESULTS.md
    python benchmarks/run.py --device cuda       # synchronises before and after each timing

Peers (benchmark-only dependencies): pytorch-grad-cam (``grad-cam``), captum, torchcam. A case
whose library or cnnviz method is missing is listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_cases import (
    CASES,
    GRADIENT_CAMS,
    MODELS,
    SLOW_BATCH,
    SLOW_PEERS,
    Case,
    CaseUnavailableError,
    Runner,
    Setup,
    make_setup,
)

BENCHMARKS = Path(__file__).resolve().parent


def method_family_cases() -> list[Case]:
    """The cases of every ``benchmarks/cases_*.py`` (one module per family of methods, each
    with its ``CASES`` list), in file-name order, after those of ``bench_cases``."""
    found: list[Case] = []
    for path in sorted(BENCHMARKS.glob("cases_*.py")):
        found.extend(importlib.import_module(path.stem).CASES)
    return found


ALL_CASES: list[Case] = CASES + method_family_cases()


@dataclass
class Result:
    model: str
    batch: int
    case: str
    status: str = "ok"  # ok | skipped | failed
    note: str = ""
    repeats: int = 0
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    yardstick: str = "plain:forward"
    ratio: float | None = None
    extra_mib: float | None = None
    memory_ratio: float | None = None
    vs_captum: float | None = None  # cnnviz's time over captum's, same rounds (median)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settle(s: Setup) -> None:
    """Between calls, outside the timing: drop parameter gradients a peer left, collect garbage."""
    for p in s.module.parameters():
        p.grad = None
    gc.collect()


def timed(run: Runner, s: Setup) -> float:
    settle(s)
    synchronise(s.device)
    start = time.perf_counter()
    run()
    synchronise(s.device)
    return time.perf_counter() - start


YARDSTICKS = ("plain:forward", "plain:forward-x32")


def time_group(
    s: Setup, runners: dict[str, Runner], sets: list[list[str]], repeats: int, seed: int
) -> list[list[dict[str, float]]]:
    """``repeats`` rounds; in each, every set (a yardstick and the tools doing the same thing)
    runs back to back in random order, the sets in random order, so that load drift on a
    shared machine hits what is compared alike. Returns, per set, each round's times."""
    rounds: list[list[dict[str, float]]] = [[] for _ in sets]
    rng = random.Random(seed)
    order = list(range(len(sets)))
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            members = list(sets[i])
            rng.shuffle(members)
            rounds[i].append({name: timed(runners[name], s) for name in members})
    return rounds


def median_ratio(rounds: list[dict[str, float]], num: str, den: str) -> float:
    """The median over rounds of ``num``'s time over ``den``'s in the same round."""
    return statistics.median(r[num] / r[den] for r in rounds)


def read_status(key: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_memory(case_id: str, device: torch.device) -> dict[str, Any]:
    """In this (fresh) process: the extra peak memory of one call of one case, in bytes."""
    model, batch_text, name = case_id.split("/")
    case = next(c for c in ALL_CASES + SLOW_PEERS if c.name == name)
    s = make_setup(model, int(batch_text.lstrip("b")), device)
    run = case.build(s)
    settle(s)
    if device.type == "cuda":
        synchronise(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        synchronise(device)
        return {"extra_bytes": torch.cuda.max_memory_allocated(device) - base, "how": "cuda"}
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = read_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    run()
    return {"extra_bytes": read_status("VmHWM") - base, "how": "VmHWM"}


def memory_of(case_id: str, args: argparse.Namespace) -> tuple[float | None, str]:
    """Run ``--measure-memory`` in a fresh subprocess; (extra MiB or None, note)."""
    command = [
        sys.executable,
        __file__,
        "--measure-memory",
        case_id,
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    # A fixed mmap threshold makes glibc return every large tensor to the OS when freed, so the
    # resident high-water mark follows the live tensors rather than the allocator's caching.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return None, f"memory run failed: {done.stderr.strip().splitlines()[-1:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])["extra_bytes"] / 2**20, ""


# -- running the groups -------------------------------------------------------------------------


def group_cases(batch: int, slow: bool, args: argparse.Namespace) -> list[Case]:
    """The cases of one group (the yardsticks always), filtered by ``--cases``."""
    cases = ALL_CASES + (SLOW_PEERS if args.slow_peers else [])
    return [
        c
        for c in cases
        if (c.slow == slow or c.name == YARDSTICKS[0])
        and (slow or c.batches is None or batch in c.batches)
        and (not args.cases or c.name in YARDSTICKS or any(p in c.name for p in args.cases))
    ]


def run_group(
    model: str, batch: int, slow: bool, args: argparse.Namespace, device: torch.device
) -> list[Result]:
    cases = group_cases(batch, slow, args)
    if not any(c.name not in YARDSTICKS for c in cases):
        return []
    s = make_setup(model, batch, device)
    print(
        f"# {model} batch {batch}{' (slow cases)' if slow else ''}: layer {s.layer}, "
        f"{len(cases)} cases",
        file=sys.stderr,
        flush=True,
    )
    results = {c.name: Result(model, batch, c.name, note=c.note) for c in cases}
    runners: dict[str, Runner] = {}
    started = time.perf_counter()
    for case in cases:  # the first warm-up round, which also finds the cases that cannot run
        try:
            runners[case.name] = case.build(s)
            timed(runners[case.name], s)
        except CaseUnavailableError as e:
            results[case.name].status, results[case.name].note = "skipped", str(e)
            runners.pop(case.name, None)
        except Exception as e:
            results[case.name].status = "failed"
            results[case.name].note = f"{type(e).__name__}: {str(e)[:200]}"
            runners.pop(case.name, None)
    for _ in range(args.warmup - 1):
        for run in runners.values():
            timed(run, s)
    repeats = args.repeats
    if time.perf_counter() - started > args.round_budget:
        repeats = min(repeats, 3)  # a slow group: fewer rounds, stated in the table
    sets: dict[tuple[str, str], list[str]] = {}  # (yardstick, method) → yardstick + tools
    for c in cases:
        yardstick = YARDSTICKS[1] if c.forwards else YARDSTICKS[0]
        if c.name in runners and c.name not in YARDSTICKS and yardstick in runners:
            sets.setdefault((yardstick, c.method), [yardstick]).append(c.name)
    rounds = time_group(s, runners, list(sets.values()), repeats, seed=batch)
    set_of = {name: i for i, members in enumerate(sets.values()) for name in members[1:]}
    for case in cases:
        r = results[case.name]
        times = [t[case.name] for i in rounds for t in i if case.name in t]
        if not times:
            if r.status == "ok":
                r.status, r.note = "not timed", "its yardstick did not run"
            continue
        r.times_s, r.repeats = [round(t, 5) for t in times], len(times)
        r.median_s = statistics.median(times)
        if case.name in set_of:
            these = rounds[set_of[case.name]]
            yardstick = YARDSTICKS[1] if case.forwards else YARDSTICKS[0]
            r.ratio = median_ratio(these, case.name, yardstick)
            if case.forwards is not None:
                count = case.forwards(s)
                r.yardstick = f"{count} × plain:forward of one image (batched by 32)"
                r.ratio *= 32 / count
            peer = f"captum:{case.method}"
            if case.tool == "cnnviz" and peer in these[0]:
                r.vs_captum = median_ratio(these, case.name, peer)
        elif case.name == YARDSTICKS[0]:
            r.ratio = 1.0
        if args.memory and case.memory:
            r.extra_mib, failure = memory_of(f"{model}/b{batch}/{case.name}", args)
            r.note = "; ".join(n for n in (r.note, failure) if n)
    del s, runners
    gc.collect()
    return list(results.values())


def add_memory_ratios(results: list[Result]) -> None:
    plain = {(r.model, r.batch): r.extra_mib for r in results if r.case == "plain:forward"}
    for r in results:
        base = plain.get((r.model, r.batch))
        if r.extra_mib is not None and base:
            r.memory_ratio = r.extra_mib / base


def check_targets(results: list[Result]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and ok / MISSED / not measured."""
    found = {(r.model, r.batch, r.case): r for r in results if r.status == "ok"}
    models = sorted({r.model for r in results})
    checks: list[dict[str, Any]] = []

    def add(target: str, value: float | None, limit: float) -> None:
        verdict = "not measured" if value is None else ("ok" if value <= limit else "MISSED")
        checks.append({"target": target, "value": value, "limit": limit, "verdict": verdict})

    def ratio(model: str, batch: int, case: str) -> float | None:
        r = found.get((model, batch, case))
        return None if r is None else r.ratio

    for model in models:
        for method in ("gradcam", *GRADIENT_CAMS):
            add(
                f"{model} b8 cnnviz:{method} time / forward",
                ratio(model, 8, f"cnnviz:{method}"),
                1.10,
            )
        for method in ("saliency", "integrated-gradients", "smoothgrad"):
            for batch in (8, SLOW_BATCH):
                ours = found.get((model, batch, f"cnnviz:{method}"))
                if ours and ours.vs_captum:
                    add(f"{model} b{batch} cnnviz:{method} time / captum's", ours.vs_captum, 1.0)
        for method, limit in (
            ("scorecam", 1.1),
            ("ablationcam", 1.1),
            ("deletion", 1.2),
            ("insertion", 1.2),
        ):
            add(
                f"{model} b1 cnnviz:{method} time / (forward per pass)",
                ratio(model, 1, f"cnnviz:{method}"),
                limit,
            )
    vgg = found.get(("vgg11_bn", 32, "cnnviz:gradcam"))
    add(
        "vgg11_bn b32 cnnviz:gradcam extra memory / forward's",
        vgg.memory_ratio if vgg else None,
        1.5,
    )
    return checks


# -- reporting ----------------------------------------------------------------------------------


def machine(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("cnnviz", "torch", "torchvision", "timm", "captum", "grad-cam", "torchcam"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "gpu": gpu,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "command": " ".join(sys.argv),
    }


def fmt(value: float | None, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def table(results: list[Result]) -> list[str]:
    rows = [
        "| model | batch | case | median s | × forward | × captum | extra MiB | × fwd memory "
        "| runs | note |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        note = r.note if r.status == "ok" else f"**{r.status}**: {r.note}"
        if r.yardstick != "plain:forward":
            note = "; ".join(n for n in (f"ratio to {r.yardstick}", note) if n)
        rows.append(
            f"| {r.model} | {r.batch} | {r.case} | {fmt(r.median_s, '{:.3f}')} | "
            f"{fmt(r.ratio, '{:.2f}')} | {fmt(r.vs_captum, '{:.2f}')} | "
            f"{fmt(r.extra_mib, '{:.0f}')} | "
            f"{fmt(r.memory_ratio, '{:.2f}')} | {r.repeats or ''} | {note.replace('|', '/')} |"
        )
    return rows


def report(meta: dict[str, Any], results: list[Result], checks: list[dict[str, Any]]) -> str:
    v = meta["versions"]
    lines = [
        "# cnnviz benchmark",
        "",
        f"{meta['date']} · {meta['cpu']} ({meta['logical_cpus']} logical CPUs)"
        + (f" · GPU {meta['gpu']}" if meta["gpu"] else "")
        + f" · device {meta['device']} · {meta['threads']} threads · torch {v['torch']}"
        f" · cnnviz {v['cnnviz']} · pytorch-grad-cam {v['grad-cam']} · captum {v['captum']}"
        f" · torchcam {v['torchcam']} · load average {meta['load_before']} → {meta['load_after']}",
        "",
        f"`{meta['command']}`. Each case runs {meta['warmup']} time(s) untimed, then in "
        f"{meta['repeats']} rounds (3 where one round of a group exceeds the budget). In each "
        "round the tools doing the same thing run back to back with their yardstick, in random "
        "order. Yardstick: the model's plain forward under `torch.no_grad()` on the same batch "
        "(for perturbation methods: that forward on 32 copies of the image, per image, times the "
        "forwards the method needs at least). *median s*: the median time; *× forward*, "
        "*× captum*: the median over rounds of the time over the yardstick's (captum's) in the "
        "same round. *extra MiB*: peak resident memory (GPU: allocated) of one call in a fresh "
        "process, minus the level with model, input and libraries loaded; *× fwd memory* divides "
        "it by the plain forward's.",
        "",
        *table(results),
        "",
        "## Targets (issue 6)",
        "",
        "| target | measured | limit | verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    for c in checks:
        lines.append(
            f"| {c['target']} | {fmt(c['value'], '{:.2f}')} | {c['limit']} | {c['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--cases", nargs="+", help="only cases whose tool:method contains one of these")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per group (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument(
        "--round-budget",
        type=float,
        default=120.0,
        help="seconds; a group whose warm-up round is slower runs 3 rounds",
    )
    p.add_argument(
        "--quick", action="store_true", help="batch 8, 3 rounds, no memory, no slow cases"
    )
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip memory runs")
    p.add_argument(
        "--no-slow",
        dest="slow",
        action="store_false",
        help="skip IG, SmoothGrad, Score-CAM, Ablation-CAM, deletion/insertion",
    )
    p.add_argument("--slow-peers", action="store_true", help="also the peers' Score-CAM (minutes)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write JSON ('-': stdout)")
    p.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    p.add_argument("--measure-memory", metavar="CASE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.repeats, args.memory, args.slow = [8], 3, False, False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, device)))
        return 0
    load_before = load_average()
    results: list[Result] = []
    for model in args.models:
        for batch in args.batches:
            results += run_group(model, batch, False, args, device)
        if args.slow:
            results += run_group(model, SLOW_BATCH, True, args, device)
    add_memory_ratios(results)
    checks = check_targets(results)
    meta = {**machine(args), "load_before": load_before, "load_after": load_average()}
    text = report(meta, results, checks)
    if args.json:
        payload = json.dumps(
            {"meta": meta, "results": [asdict(r) for r in results], "targets": checks}, indent=1
        )
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    if args.json != "-":
        print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
