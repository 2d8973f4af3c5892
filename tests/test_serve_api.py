"""The explorer's JSON API (docs/explorer-api.md) through Starlette's test client, on the real
EfficientNet-Lite0 and the bundled photos: every endpoint, the token, the limits and the errors."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import cnnviz
from cnnviz.data.samples import bundled_samples
from cnnviz.featurevis.exemplars import collect_exemplars
from cnnviz.inspect.filters import conv_weight, filter_tiles
from cnnviz.models.loaded import LoadedModel
from cnnviz.serve import explain_views
from cnnviz.serve.app import create_app
from cnnviz.serve.security import CONTENT_SECURITY_POLICY, token_matches
from cnnviz.serve.session import ExplorerSession
from cnnviz.serve.uploads import UploadLimits

TOKEN = "t0ken-for-tests"
BASE = "http://127.0.0.1:5151"
AUTH = {"Authorization": f"Token {TOKEN}"}


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def session(loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> ExplorerSession:
    folder = tmp_path_factory.mktemp("uploads")
    limits = UploadLimits(max_bytes=200_000, max_pixels=4_000_000)
    return ExplorerSession(loaded, [], folder=folder, samples=bundled_samples(), limits=limits)


@pytest.fixture(scope="module")
def client(session: ExplorerSession) -> Iterator[TestClient]:
    with TestClient(create_app(session, TOKEN), base_url=BASE) as c:
        yield c


def get(client: TestClient, path: str, **params: Any) -> Any:
    response = client.get(path, params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return (
        response.json()
        if response.headers["content-type"].startswith("application/json")
        else response
    )


def image_ids(client: TestClient) -> dict[str, str]:
    return {item["name"]: item["id"] for item in get(client, "/api/images")["images"]}


def png_image(response: Any) -> np.ndarray:
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


# -- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/static/explorer.js", "/api/info", "/api/images"])
def test_every_endpoint_needs_the_token(client: TestClient, path: str) -> None:
    none = client.get(path)
    wrong = client.get(path, headers={"Authorization": "Token nope"})
    wrong_query = client.get(path, params={"token": TOKEN + "x"})
    for response in (none, wrong, wrong_query):
        assert response.status_code == 403
        assert response.json()["status"] == 403
        assert "token" in response.json()["error"]
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_sets_a_cookie_that_opens_the_api(session: ExplorerSession) -> None:
    with TestClient(create_app(session, TOKEN), base_url=BASE) as fresh:
        page = fresh.get("/", params={"token": TOKEN})
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("cnnviz-token-5151=") and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        assert fresh.get("/api/info").status_code == 200  # the cookie alone
        fresh.cookies.clear()
        api = fresh.get("/api/info", params={"token": TOKEN})
        assert api.status_code == 200 and "set-cookie" not in api.headers  # only the page sets it


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr("cnnviz.serve.security.secrets.compare_digest", digest)
    assert token_matches(TOKEN, TOKEN) and not token_matches("x", TOKEN)
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (b"x", TOKEN.encode())]


def test_a_foreign_host_header_is_refused(client: TestClient) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host."""
    response = client.get("/api/info", headers={**AUTH, "Host": "evil.example"})
    assert response.status_code == 400


def test_security_headers_on_every_answer(client: TestClient) -> None:
    for response in (
        client.get("/api/info", headers=AUTH),
        client.get("/api/nothing-here", headers=AUTH),
        client.get("/api/images/0123/input.png", headers=AUTH),
    ):
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY  # no inline script, no CDN
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


# -- paths never come from the request ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2f..%2fapp.py",
        "/static/../app.py",
        "/static/index.html/../../session.py",
        "/api/images/..%2f..%2f..%2fetc%2fpasswd/input.png",
        "/api/images/%2fetc%2fpasswd/input.png",
        "/static/%2e%2e/%2e%2e/errors.py",
    ],
)
def test_path_traversal_is_refused(client: TestClient, path: str) -> None:
    response = client.get(path, headers=AUTH)
    assert response.status_code == 404
    assert "error" in response.json()
    assert b"import" not in response.content and b"root:" not in response.content


def test_only_the_page_assets_are_served(client: TestClient) -> None:
    js = client.get("/static/explorer.js", headers=AUTH)
    css = client.get("/static/explorer.css", headers=AUTH)
    assert js.headers["content-type"].startswith("text/javascript")
    assert css.headers["content-type"].startswith("text/css")
    assert client.get("/static/index.html", headers=AUTH).status_code == 404  # only via /


# -- descriptions ------------------------------------------------------------------------------


def test_info_lists_the_model_and_every_method(client: TestClient) -> None:
    info = get(client, "/api/info")
    assert info["model"]["name"] == "efficientnet_lite0"
    assert info["model"]["classes"] == 1000 and info["model"]["input"] == [3, 224, 224]
    assert info["default_layer"] == "bn2" and info["default_method"] == "gradcam"
    names = [m["name"] for m in info["methods"]]
    assert names == cnnviz.method_names()
    by_name = {m["name"]: m for m in info["methods"]}
    assert by_name["gradcam"]["needs_layer"] and by_name["gradcam"]["fast"]
    assert not by_name["saliency"]["needs_layer"] and not by_name["saliency"]["fast"]
    assert {"name": "signed", "default": False, "type": "bool"} in by_name["saliency"]["options"]
    ig = {o["name"] for o in by_name["integrated-gradients"]["options"]}
    assert "steps" in ig and "preprocessing" not in ig  # the explorer supplies it
    assert info["limits"] == {"upload_bytes": 200_000, "upload_pixels": 4_000_000}


def test_classes_layers_and_summary(client: TestClient, loaded: LoadedModel) -> None:
    classes = get(client, "/api/classes")["classes"]
    assert classes == list(loaded.class_names) and classes[967] == "espresso"
    layers = {row["name"]: row for row in get(client, "/api/layers")["layers"]}
    assert layers["bn2"]["shape"] == [1280, 7, 7] and layers["bn2"]["spatial"]
    assert layers["conv_stem"]["conv"] and not layers["bn2"]["conv"]
    assert not layers["classifier"]["spatial"] and layers["classifier"]["shape"] == [1000]
    summary = get(client, "/api/summary")
    assert summary["total_params"] == cnnviz.count_params(loaded) == 4_652_008
    assert summary["total_mult_adds"] > 0 and summary["input_size"] == [3, 224, 224]


def test_images_predictions_and_input(client: TestClient) -> None:
    ids = image_ids(client)
    assert set(ids) == {"chelsea.jpg", "coffee.jpg"}
    listed = get(client, "/api/images")["images"]
    assert {(i["source"], i["width"], i["height"]) for i in listed} == {
        ("sample", 451, 300),
        ("sample", 600, 400),
    }
    top = get(client, f"/api/images/{ids['coffee.jpg']}/predictions", k=3)["predictions"]
    assert top[0]["label"] == "espresso" and len(top) == 3
    assert top[0]["probability"] > 0.9 > top[1]["probability"]
    assert get(client, f"/api/images/{ids['chelsea.jpg']}/input.png").content[:4] == b"\x89PNG"
    assert png_image(get(client, f"/api/images/{ids['chelsea.jpg']}/input.png")).shape == (
        224,
        224,
        3,
    )


# -- maps --------------------------------------------------------------------------------------


def test_explanation_equals_cnnviz_explain(client: TestClient, loaded: LoadedModel) -> None:
    """The explorer's map (from the cached layer graph) is cnnviz.explain's, for several classes
    and CAM methods, and its picture is Explanation.to_pil's."""
    coffee = image_ids(client)["coffee.jpg"]
    path = next(p for p in bundled_samples() if p.name == "coffee.jpg")
    for method, target in [("gradcam", 967), ("gradcam", 968), ("gradcam++", 504), ("cam", 968)]:
        answer = get(
            client, f"/api/images/{coffee}/explanation", method=method, **{"class": target}
        )
        reference = cnnviz.explain(loaded, path, method, target=target)
        assert answer["target"]["index"] == target
        assert answer["target"]["label"] == loaded.class_names[target]
        assert answer["layer"] == "bn2"
        assert answer["target"]["probability"] == pytest.approx(
            float(reference.probabilities[0, 0]), rel=1e-5
        )
        picture = png_image(client.get("/" + answer["image"], headers=AUTH))
        expected = np.asarray(reference.to_pil())
        assert np.abs(picture.astype(int) - expected.astype(int)).max() <= 1
        assert loaded.class_names[target] in answer["legend"]


def test_changing_the_class_changes_the_map(client: TestClient) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    first = get(client, f"/api/images/{coffee}/explanation", method="gradcam")
    other = get(client, f"/api/images/{coffee}/explanation", method="gradcam", **{"class": "cup"})
    assert first["target"]["label"] == "espresso" and other["target"]["label"] == "cup"
    assert first["image"] != other["image"]
    a = png_image(client.get("/" + first["image"], headers=AUTH)).astype(int)
    b = png_image(client.get("/" + other["image"], headers=AUTH)).astype(int)
    assert np.abs(a - b).mean() > 2


def test_explanation_options_drawing_command_and_manifest(client: TestClient) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    answer = get(
        client,
        f"/api/images/{coffee}/explanation",
        method="saliency",
        sign="all",
        style="heatmap",
        cmap="viridis",
        alpha="0.7",
        **{"class": "967", "o.signed": "true"},
    )
    assert answer["layer"] is None and answer["sign"] == "signed"
    assert answer["legend"] == "red: for espresso · blue: against · white: neither"  # bwr
    assert answer["command"] == (
        f"cnnviz explain {next(p for p in bundled_samples() if p.name == 'coffee.jpg')} "
        "--model efficientnet_lite0 --method saliency --target 967 --option signed=True "
        "--sign all --style heatmap --cmap viridis --alpha 0.7 --out cnnviz-out"
    )
    manifest = answer["manifest"]
    assert manifest["method"] == "saliency" and manifest["target"] == "espresso"
    assert manifest["options"] == {"signed": True}
    assert manifest["drawing"] == {
        "sign": "signed",
        "style": "heatmap",
        "cmap": "viridis",
        "alpha": 0.7,
        "outlier_percent": 2.0,
    }
    assert manifest["model"]["name"] == "efficientnet_lite0"
    bar = png_image(client.get("/" + answer["colorbar"], headers=AUTH))
    assert bar.shape == (14, 256, 3)
    assert tuple(bar[0, 0]) != tuple(bar[0, -1])


def test_a_layer_is_chosen_and_named(client: TestClient) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    answer = get(client, f"/api/images/{coffee}/explanation", method="gradcam", layer="blocks.5")
    assert answer["layer"] == "blocks.5" and "--layer blocks.5" in answer["command"]
    picture = png_image(client.get("/" + answer["image"], headers=AUTH))
    assert picture.shape == (224, 224, 3)


@pytest.mark.parametrize(
    ("params", "phrase"),
    [
        ({"method": "gradcamm"}, "Did you mean"),
        ({"method": "gradcam", "layer": "nope"}, "Unknown layer"),
        ({"method": "gradcam", "layer": "classifier"}, "spatial"),
        ({"method": "gradcam", "class": "1000"}, "out of range"),
        ({"method": "gradcam", "class": "not a class"}, "Unknown class name"),
        ({"method": "gradcam", "alpha": "2"}, "alpha"),
        ({"method": "gradcam", "sign": "up"}, "sign"),
        ({"method": "gradcam", "cmap": "nocmap"}, "colormap"),
        ({"method": "saliency", "o.bogus": "1"}, "It takes: signed"),
    ],
)
def test_bad_map_requests_get_a_json_error(
    client: TestClient, params: dict[str, str], phrase: str
) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    response = client.get(f"/api/images/{coffee}/explanation", params=params, headers=AUTH)
    assert response.status_code == 400, response.text
    assert phrase in response.json()["error"]


def test_unknown_image_and_endpoint_are_404(client: TestClient) -> None:
    for path in ("/api/images/ffffffffffffffff/explanation", "/api/nothing"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404 and response.json()["status"] == 404


def test_faithfulness_scores(client: TestClient) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    scores = get(client, f"/api/images/{coffee}/faithfulness", method="gradcam")
    assert scores["steps"] == explain_views.FAITHFULNESS_STEPS
    assert 0.0 <= scores["deletion"] < scores["insertion"] <= 1.0


# -- units -------------------------------------------------------------------------------------


def test_activation_grid_sorted_by_strength(client: TestClient, loaded: LoadedModel) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    grid = get(client, f"/api/images/{coffee}/activations", layer="blocks.5", limit=20)
    assert grid["total"] == 192 and grid["shape"] == [192, 7, 7] and len(grid["channels"]) == 20
    means = [c["mean"] for c in grid["channels"]]
    assert means == sorted(means, reverse=True)
    reference = cnnviz.activations(loaded, bundled_samples()[1], ["blocks.5"])["blocks.5"][0]
    top = torch.sort(-reference.mean(dim=(1, 2)), stable=True).indices[:20].tolist()
    assert [c["index"] for c in grid["channels"]] == top
    sprite = png_image(client.get("/" + grid["sprite"], headers=AUTH))
    assert sprite.shape == (3 * grid["tile"], grid["columns"] * grid["tile"], 3)
    by_index = get(client, f"/api/images/{coffee}/activations", layer="blocks.5", sort="index")
    assert [c["index"] for c in by_index["channels"]] == list(range(64))


def test_activation_grid_refuses_a_flat_layer(client: TestClient) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    response = client.get(
        f"/api/images/{coffee}/activations", params={"layer": "classifier"}, headers=AUTH
    )
    assert response.status_code == 400 and "convolutional" in response.json()["error"]


def test_channel_detail_filter_featurevis_and_exemplars(
    client: TestClient, loaded: LoadedModel, session: ExplorerSession
) -> None:
    coffee = image_ids(client)["coffee.jpg"]
    detail = get(client, f"/api/images/{coffee}/channel", layer="conv_stem", channel=5)
    assert detail["layer"] == "conv_stem" and detail["channel"] == 5
    assert png_image(client.get("/" + detail["overlay"], headers=AUTH)).shape == (224, 224, 3)
    tile = png_image(client.get("/" + detail["filter"], headers=AUTH))
    weight = conv_weight(loaded.module, "conv_stem")[5:6]
    expected = filter_tiles(weight)[0].repeat(32, 0).repeat(32, 1)  # 3×3 weights, 32× each
    assert np.array_equal(tile, expected)
    vis = png_image(client.get("/" + detail["featurevis"] + "&steps=4", headers=AUTH))
    assert vis.shape == (128, 128, 3) and vis.std() > 0
    strip = png_image(client.get("/" + detail["exemplars"], headers=AUTH))
    found = collect_exemplars(loaded, [e.path for e in session.images()], "conv_stem", k=4)
    crops = found.crops[found.row(5)][:2]  # two images: two crops, white 2-pixel gap between
    assert np.array_equal(strip[:, :64], crops[0]) and np.array_equal(strip[:, 66:], crops[1])
    assert strip.shape == (64, 130, 3) and (strip[:, 64:66] == 255).all()
    no_filter = get(client, f"/api/images/{coffee}/channel", layer="bn2", channel=0)
    assert no_filter["filter"] is None
    out = client.get(
        f"/api/images/{coffee}/channel", params={"layer": "conv_stem", "channel": 32}, headers=AUTH
    )
    assert out.status_code == 400 and "0…31" in out.json()["error"]
    sheet = png_image(get(client, "/api/filters.png", layer="conv_stem"))
    assert sheet.shape[1] >= 256


# -- uploads -----------------------------------------------------------------------------------


def encoded(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def post(client: TestClient, data: bytes, content_type: str = "image/png") -> Any:
    headers = {**AUTH, "Content-Type": content_type, "X-Filename": "../../evil name.png"}
    return client.post("/api/images", content=data, headers=headers)


def test_an_upload_is_explained(client: TestClient, session: ExplorerSession) -> None:
    photo = Image.open(bundled_samples()[0]).convert("RGB")
    response = post(client, encoded(photo, "JPEG"), "image/jpeg")
    assert response.status_code == 201, response.text
    image = response.json()["image"]
    assert image["source"] == "upload" and image["name"] == "evil name.png"
    assert image["width"] == 451
    stored = session.image(image["id"]).path
    assert stored.parent == session.folder  # never where the filename says
    top = get(client, f"/api/images/{image['id']}/predictions")["predictions"][0]
    assert "cat" in top["label"]


def test_an_oversized_upload_is_413(client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise))
    assert len(data) > 200_000
    response = post(client, data)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width × height`` pixels, with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (width + 1) * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_before_decoding(client: TestClient) -> None:
    data = bomb_png(30_000, 30_000)  # 900 megapixels in a few kilobytes
    assert len(data) < 50_000
    response = post(client, data)
    assert response.status_code == 422
    assert "decompression bomb" in response.json()["error"]


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"GIF89a not really", "text/plain", 415),
        (b"%PDF-1.4 a pdf", "image/png", 422),
        (b"", "image/png", 422),
        (encoded(Image.new("RGB", (8, 8)), "ICO"), "image/png", 415),
    ],
)
def test_bad_uploads_are_refused(
    client: TestClient, data: bytes, content_type: str, status: int
) -> None:
    response = post(client, data, content_type)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_a_failing_request_does_not_stop_the_server(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    coffee = image_ids(client)["coffee.jpg"]
    monkeypatch.setattr(explain_views, "explanation_for", broken)
    failed = client.get(f"/api/images/{coffee}/explanation", headers=AUTH)
    assert failed.status_code == 500 and "boom" in failed.json()["error"]
    monkeypatch.undo()
    assert client.get(f"/api/images/{coffee}/explanation", headers=AUTH).status_code == 200


def test_cache_stats_are_reported(client: TestClient) -> None:
    stats = get(client, "/api/stats")
    assert 0 < stats["bytes"] <= stats["budget"] == 512 * 1024 * 1024
    assert stats["hits"] > 0 and stats["entries"] > 0


def test_json_errors_are_json(client: TestClient) -> None:
    response = client.get("/api/images/x/predictions", params={"k": "many"}, headers=AUTH)
    assert response.status_code == 404  # the id is looked up first
    coffee = image_ids(client)["coffee.jpg"]
    response = client.get(f"/api/images/{coffee}/predictions", params={"k": "many"}, headers=AUTH)
    assert response.status_code == 400
    assert json.loads(response.text) == {
        "error": "k must be a whole number, got 'many'.",
        "status": 400,
    }


def test_given_images_are_listed_first(loaded: LoadedModel, tmp_path: Path) -> None:
    own = tmp_path / "mine.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(own)
    session = ExplorerSession(loaded, [own], folder=tmp_path, samples=bundled_samples())
    with TestClient(create_app(session, TOKEN), base_url=BASE) as c:
        listed = get(c, "/api/images")["images"]
    assert [(i["name"], i["source"]) for i in listed] == [
        ("mine.png", "given"),
        ("chelsea.jpg", "sample"),
        ("coffee.jpg", "sample"),
    ]


def test_the_page_passes_its_token_to_its_assets(client: TestClient) -> None:
    """A page shown in a notebook's frame on another site gets no cookie: its two assets carry
    the token in their URLs (and the page's script adds it to every request)."""
    page = client.get("/", params={"token": TOKEN}).text
    assert f'"static/explorer.js?token={TOKEN}"' in page
    assert f'"static/explorer.css?token={TOKEN}"' in page
    assert "withToken" in client.get("/static/explorer.js", headers=AUTH).text
    assert '"static/explorer.js"' in client.get("/", headers=AUTH).text  # a header: no query


def test_an_upload_name_is_percent_decoded(client: TestClient) -> None:
    data = encoded(Image.new("RGB", (20, 20), (0, 90, 200)))
    headers = {**AUTH, "Content-Type": "image/png", "X-Filename": "M%C3%BCnchen%20%C3%BC.png"}
    response = client.post("/api/images", content=data, headers=headers)
    assert response.status_code == 201 and response.json()["image"]["name"] == "München ü.png"


def test_a_model_without_a_spatial_layer_starts_on_saliency(tmp_path: Path) -> None:
    """A model with no CAM layer (as a ViT has none): the page starts on saliency, and a CAM
    request says why it cannot be answered instead of failing."""
    from torch import nn

    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).eval()
    prep = cnnviz.Preprocessing(input_size=(16, 16))
    model = cnnviz.from_module(flat, class_names=["a", "b", "c"], preprocessing=prep)
    session = ExplorerSession(model, [], folder=tmp_path, samples=bundled_samples())
    with TestClient(create_app(session, TOKEN), base_url=BASE) as c:
        info = get(c, "/api/info")
        assert info["default_layer"] is None and info["default_method"] == "saliency"
        image = image_ids(c)["coffee.jpg"]
        answer = get(c, f"/api/images/{image}/explanation", method="saliency")
        assert answer["target"]["label"] in {"a", "b", "c"}
        refused = c.get(
            f"/api/images/{image}/explanation", params={"method": "gradcam"}, headers=AUTH
        )
        assert refused.status_code == 400 and "layer" in refused.json()["error"].lower()


def test_a_pointwise_filter_shows_its_weight_per_input_channel(
    client: TestClient, loaded: LoadedModel
) -> None:
    """A 1×1 filter's mean over its inputs would be one grey pixel: its 16 input weights are
    shown as a 4 × 4 grid instead, lowest black and highest white."""
    weights = conv_weight(loaded.module, "blocks.1.0.conv_pw")[33, :, 0, 0]
    tile = png_image(get(client, "/api/filter.png", layer="blocks.1.0.conv_pw", channel=33))
    cells = tile[12::24, 12::24, 0].reshape(-1).astype(int)  # the centre of each 24-pixel cell
    unit = ((weights - weights.min()) / (weights.max() - weights.min())).numpy()
    assert tile.shape == (96, 96, 3) and np.abs(cells - np.round(255 * unit)).max() <= 1
