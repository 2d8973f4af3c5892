"""The explorer's latency, load and memory (a script, not a test), on EfficientNet-Lite0.

Starts ``cnnviz.explore`` on 127.0.0.1 (a free port) in this process and measures over real HTTP:

* the first map of an image (decode, forward, backward), then a **class change** and a **CAM
  method change**: the server time each answer reports (``seconds``) and the client's round trip
  for the JSON and its picture — goal ≤ 150 ms server time;
* a layer's **activation grid** the first time it is asked (forward to the layer, 64 tiles) —
  goal ≤ 250 ms;
* the **first page load** in headless Chromium (Playwright, when installed) up to the first map
  shown — goal ≤ 1 s — and the page's own assets — goal ≤ 300 KB;
* a **load test**: 32 concurrent clients × 25 mixed requests each (predictions, maps of several
  methods and classes, pictures, activation grids, channels) — errors, p50/p95 latency, requests
  per second, the cache's peak bytes and the process's peak resident memory.

    python benchmarks/serve.py              # ~1 min on 2 cores
    python benchmarks/serve.py --clients 8 --requests 10
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

import cnnviz
from cnnviz.serve.server import Explorer

HERE = Path(__file__).resolve().parent
CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam", "eigencam")
CLASSES = (967, 968, 504, 925, 960, 281, 285, 282, 287, 340)
GRID_LAYERS = ("blocks.1", "blocks.3", "blocks.5", "bn2", "conv_stem")


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def latency(client: httpx.Client, image: str) -> dict[str, Any]:
    """First map, class changes, CAM-method changes, activation grids."""

    def explain(method: str, cls: int) -> tuple[float, float]:
        def both() -> dict[str, Any]:
            answer = client.get(
                f"/api/images/{image}/explanation", params={"method": method, "class": str(cls)}
            )
            answer.raise_for_status()
            client.get("/" + answer.json()["image"]).raise_for_status()
            return dict(answer.json())

        answer, seconds = timed(both)
        return float(answer["seconds"]), seconds

    first_server, first_round = explain("gradcam", CLASSES[0])
    classes = [explain("gradcam", cls) for cls in CLASSES[1:]]
    methods = [explain(method, CLASSES[0]) for method in CAM_METHODS[1:]]

    def grid(layer: str) -> float:
        def both() -> None:
            answer = client.get(
                f"/api/images/{image}/activations", params={"layer": layer, "limit": "64"}
            )
            answer.raise_for_status()
            client.get("/" + answer.json()["sprite"]).raise_for_status()

        return timed(both)[1]

    grids = {layer: grid(layer) for layer in GRID_LAYERS}
    return {
        "first_map_server_s": first_server,
        "first_map_round_trip_s": first_round,
        "class_change_server_s": [s for s, _ in classes],
        "class_change_round_trip_s": [r for _, r in classes],
        "method_change_server_s": [s for s, _ in methods],
        "method_change_round_trip_s": [r for _, r in methods],
        "grid_first_s": grids,
    }


def page_load(url: str) -> float | None:
    """Seconds from navigation to the first map shown, in headless Chromium; None without it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright  # lazy: optional for this script
    except ImportError:
        return None
    if chromium is None:
        return None
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function(
            "() => { const m = document.querySelector('#map-image');"
            " return m && m.complete && m.naturalWidth > 0; }",
            timeout=30_000,
        )
        seconds = time.perf_counter() - started
        browser.close()
    return seconds


def asset_bytes() -> int:
    folder = resources.files("cnnviz.serve").joinpath("static")
    return sum(
        len(folder.joinpath(name).read_bytes())
        for name in ("index.html", "explorer.js", "explorer.css")
    )


def load_test(
    client: httpx.Client, images: list[str], clients: int, requests: int
) -> dict[str, Any]:
    """``clients`` threads × ``requests`` mixed requests each; every answer must be 200."""
    layers = ("blocks.2", "blocks.4", "blocks.6", "bn2")

    def one(rng: random.Random) -> tuple[str, float, int]:
        image = rng.choice(images)
        kind = rng.choice(("predictions", "map", "map", "map", "picture", "grid", "channel"))
        base = f"/api/images/{image}"
        if kind == "predictions":
            call = lambda: client.get(f"{base}/predictions")  # noqa: E731
        elif kind in ("map", "picture"):
            params = {"method": rng.choice(CAM_METHODS), "class": str(rng.choice(CLASSES))}
            if kind == "map":
                call = lambda: client.get(f"{base}/explanation", params=params)  # noqa: E731
            else:
                call = lambda: client.get(f"{base}/map.png", params=params)  # noqa: E731
        elif kind == "grid":
            params = {"layer": rng.choice(layers), "sort": rng.choice(("strength", "index"))}
            call = lambda: client.get(f"{base}/activations", params=params)  # noqa: E731
        else:
            params = {"layer": rng.choice(layers), "channel": str(rng.randrange(40))}
            call = lambda: client.get(f"{base}/channel.png", params=params)  # noqa: E731
        response, seconds = timed(call)
        return kind, seconds, response.status_code

    def worker(seed: int) -> list[tuple[str, float, int]]:
        rng = random.Random(seed)
        return [one(rng) for _ in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(worker, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    times = [s for _, s, _ in results]
    errors = sum(1 for _, _, status in results if status != 200)
    return {
        "clients": clients,
        "requests_each": requests,
        "requests": len(results),
        "errors": errors,
        "p50_s": percentile(times, 50),
        "p95_s": percentile(times, 95),
        "max_s": max(times),
        "requests_per_s": len(results) / wall,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--cache-mb", type=float, default=512.0)
    args = parser.parse_args()

    explorer: Explorer = cnnviz.explore("efficientnet_lite0", port=0, cache_mb=args.cache_mb)
    try:
        base, token = explorer.url.split("/?token=")
        headers = {"Authorization": f"Token {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            images = [i["id"] for i in client.get("/api/images").json()["images"]]
            lat = latency(client, images[1])
            load = page_load(explorer.url)
            stress = load_test(client, images, args.clients, args.requests)
            stats = client.get("/api/stats").json()
    finally:
        explorer.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results = {
        "latency": lat,
        "page_load_s": load,
        "assets_bytes": asset_bytes(),
        "load_test": stress,
        "cache": stats,
        "peak_rss_bytes": peak_rss,
    }
    (HERE / "serve-results.json").write_text(json.dumps(results, indent=2) + "\n")

    def med(values: list[float]) -> str:
        return ms(statistics.median(values))

    server, trip = "server / round trip", lat
    rows = [
        (
            f"first map of an image ({server})",
            f"{ms(trip['first_map_server_s'])} / {ms(trip['first_map_round_trip_s'])}",
            "–",
        ),
        (
            f"class change, median of 9 ({server})",
            f"{med(trip['class_change_server_s'])} / {med(trip['class_change_round_trip_s'])}",
            "≤ 150 ms",
        ),
        ("class change, worst (server)", ms(max(trip["class_change_server_s"])), "≤ 150 ms"),
        (
            f"CAM method change, median of 6 ({server})",
            f"{med(trip['method_change_server_s'])} / {med(trip['method_change_round_trip_s'])}",
            "≤ 150 ms",
        ),
        ("CAM method change, worst (server)", ms(max(trip["method_change_server_s"])), "≤ 150 ms"),
        *(
            (f"activation grid of {layer}, first time (round trip)", ms(seconds), "≤ 250 ms")
            for layer, seconds in trip["grid_first_s"].items()
        ),
        (
            "first page load to the first map (Chromium)",
            "–" if load is None else ms(load),
            "≤ 1 s",
        ),
        ("the page's assets", f"{results['assets_bytes'] / 1024:.1f} KB", "≤ 300 KB"),
        (
            f"load: {stress['clients']} clients × {stress['requests_each']} mixed requests",
            f"{stress['errors']} errors, p50 {ms(stress['p50_s'])}, p95 {ms(stress['p95_s'])}, "
            f"{stress['requests_per_s']:.0f} requests/s",
            "no error",
        ),
        (
            "cache: peak bytes held (budget)",
            f"{stats['peak_bytes'] / 2**20:.1f} MB ({stats['budget'] / 2**20:.0f} MB)",
            "≤ budget",
        ),
        ("process peak resident memory", f"{peak_rss / 2**20:.0f} MB", "–"),
    ]
    print("| measure | value | goal |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
