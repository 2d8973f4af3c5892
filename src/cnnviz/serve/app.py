"""The explorer's Starlette app: the page, its two assets and the JSON API of
docs/explorer-api.md, every route behind the token gate (:mod:`cnnviz.serve.security`).

Handlers are plain functions, which Starlette runs in its thread pool; the model is shared under
the session's lock, cached answers are served without it. A failing request answers a JSON error
and never stops the server.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from torch import nn

from cnnviz.errors import CnnvizError
from cnnviz.inspect.summary import layer_table, summarize
from cnnviz.outputs.files import encode_png
from cnnviz.serve import explain_views, unit_views
from cnnviz.serve.requests import HttpError, MapQuery, int_param, not_found, required
from cnnviz.serve.security import TokenGate, json_error
from cnnviz.serve.session import ExplorerImage, ExplorerSession

logger = logging.getLogger(__name__)

ASSETS = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
"""The page's assets, by the only names ``/static/`` serves (nothing else is ever read)."""

MAX_CHANNELS = 1024
"""The most channels one activation grid shows."""


def asset_text(name: str) -> str:
    return resources.files("cnnviz.serve").joinpath("static", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=4096)
def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header, ``None`` when it cannot be read."""
    try:
        with Image.open(path) as opened:
            return opened.size
    except Exception:  # listed anyway: the error shows when the image is opened
        return None


def image_json(entry: ExplorerImage) -> dict[str, Any]:
    size = image_size(entry.path)
    return {**entry.as_dict(), "width": size and size[0], "height": size and size[1]}


def png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


def guarded(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """``endpoint`` answering an unexpected failure as a JSON 500 (logged), never a crash;
    cnnviz's own errors and HTTP errors go on to their handlers."""
    if inspect.iscoroutinefunction(endpoint):

        async def guarded_async(request: Request) -> Any:
            try:
                return await endpoint(request)
            except (CnnvizError, HTTPException):
                raise
            except Exception as error:
                return _failure(request, error)

        return guarded_async

    def guarded_sync(request: Request) -> Any:
        try:
            return endpoint(request)
        except (CnnvizError, HTTPException):
            raise
        except Exception as error:
            return _failure(request, error)

    return guarded_sync


def _failure(request: Request, error: Exception) -> Response:
    logger.error("explorer request %s failed", request.url.path, exc_info=error)
    return json_error(f"internal error: {type(error).__name__}: {error}", 500)


def create_app(
    session: ExplorerSession, token: str, *, hosts: tuple[str, ...] = ("127.0.0.1",)
) -> Starlette:
    """The app serving ``session`` to requests that carry ``token`` and whose ``Host`` is one of
    ``hosts`` (``localhost`` and ``127.0.0.1`` always)."""
    # lazy: the version is read from the package metadata once, here
    from cnnviz import __version__

    side = unit_views.SideModel(session.loaded)

    @functools.cache
    def layers() -> list[dict[str, Any]]:
        module, shape = session.module, session.loaded.preprocessing.input_shape
        rows = session.run(lambda: layer_table(module, shape))
        return [
            {
                "name": row.name,
                "alias": row.alias,
                "type": row.type,
                "shape": None if row.output_shape is None else list(row.output_shape[1:]),
                "parameters": row.params,
                "spatial": row.output_shape is not None and len(row.output_shape) == 4,
                "conv": isinstance(module.get_submodule(row.name), nn.Conv2d),
            }
            for row in rows
        ]

    @functools.cache
    def summary() -> dict[str, Any]:
        return session.run(lambda: summarize(session.loaded).to_dict())

    def image_route(handler: Callable[[str, Any], Response]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            image_id = request.path_params["image_id"]
            session.image(image_id)  # 404 for an unknown id
            return handler(image_id, request.query_params)

        return endpoint

    def index(request: Request) -> Response:
        page = asset_text("index.html")
        given = request.query_params.get("token")
        if (
            given is not None
        ):  # checked by the gate: the assets carry it too (a frame gets no cookie)
            query = "?" + urlencode({"token": given})
            for name in ASSETS:
                page = page.replace(f'"static/{name}"', f'"static/{name}{query}"')
        return HTMLResponse(page)

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise not_found(f"Asset {name[:40]!r}")
        return Response(asset_text(name), media_type=ASSETS[name])

    async def upload(request: Request) -> Response:
        limits = session.limits
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise limits.too_large(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                raise limits.too_large(len(body))
        entry = await run_in_threadpool(
            session.add_upload,
            bytes(body),
            request.headers.get("content-type", ""),
            unquote(request.headers.get("x-filename", "")) or None,
        )
        return JSONResponse({"image": image_json(entry)}, status_code=201)

    def explanation(image_id: str, params: Any) -> Response:
        started = time.perf_counter()
        answer = explain_views.explanation_json(
            session, image_id, MapQuery.parse(params), started=started
        )
        return JSONResponse(answer)

    def activations(image_id: str, params: Any) -> Response:
        layer, sort = required(params, "layer"), params.get("sort", "strength")
        limit = int_param(params, "limit", 64, 1, MAX_CHANNELS)
        return JSONResponse(unit_views.activations_json(session, image_id, layer, sort, limit))

    def sprite(image_id: str, params: Any) -> Response:
        layer, sort = required(params, "layer"), params.get("sort", "strength")
        limit = int_param(params, "limit", 64, 1, MAX_CHANNELS)
        return png(unit_views.activation_sprite(session, image_id, layer, sort, limit))

    def channel_of(params: Any) -> tuple[str, int]:
        return required(params, "layer"), int_param(params, "channel", 0, 0, 1 << 20)

    def channel_overlay(image_id: str, params: Any) -> Response:
        layer, channel = channel_of(params)
        cmap, alpha = params.get("cmap", "jet"), MapQuery.parse(params).alpha
        return png(unit_views.channel_png(session, image_id, layer, channel, cmap, alpha))

    routes = [
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/api/info", lambda r: JSONResponse(session.info(__version__))),
        Route("/api/classes", lambda r: JSONResponse({"classes": list(session.class_names)})),
        Route("/api/layers", lambda r: JSONResponse({"layers": layers()})),
        Route("/api/summary", lambda r: JSONResponse(summary())),
        Route("/api/stats", lambda r: JSONResponse(session.cache.stats().as_dict())),
        Route(
            "/api/images",
            lambda r: JSONResponse({"images": [image_json(e) for e in session.images()]}),
        ),
        Route("/api/images", upload, methods=["POST"]),
        Route(
            "/api/images/{image_id}/input.png",
            image_route(lambda i, p: png(encode_png(session.prepared(i).picture))),
        ),
        Route(
            "/api/images/{image_id}/predictions",
            image_route(
                lambda i, p: JSONResponse(
                    {"predictions": session.predictions(i, int_param(p, "k", 5, 1, 100))}
                )
            ),
        ),
        Route("/api/images/{image_id}/explanation", image_route(explanation)),
        Route(
            "/api/images/{image_id}/map.png",
            image_route(lambda i, p: png(explain_views.map_png(session, i, MapQuery.parse(p)))),
        ),
        Route(
            "/api/images/{image_id}/faithfulness",
            image_route(
                lambda i, p: JSONResponse(
                    explain_views.faithfulness_json(session, i, MapQuery.parse(p))
                )
            ),
        ),
        Route("/api/images/{image_id}/activations", image_route(activations)),
        Route("/api/images/{image_id}/activations.png", image_route(sprite)),
        Route(
            "/api/images/{image_id}/channel",
            image_route(
                lambda i, p: JSONResponse(unit_views.channel_json(session, i, *channel_of(p)))
            ),
        ),
        Route("/api/images/{image_id}/channel.png", image_route(channel_overlay)),
        Route(
            "/api/colorbar.png",
            lambda r: png(
                explain_views.colorbar_png(
                    r.query_params.get("cmap", "jet"), MapQuery.parse(r.query_params).sign
                )
            ),
        ),
        Route(
            "/api/filter.png",
            lambda r: png(unit_views.filter_png(session, *channel_of(r.query_params))),
        ),
        Route(
            "/api/filters.png",
            lambda r: png(unit_views.filters_png(session, required(r.query_params, "layer"))),
        ),
        Route(
            "/api/featurevis.png",
            lambda r: png(
                unit_views.featurevis_png(
                    session,
                    side,
                    *channel_of(r.query_params),
                    int_param(r.query_params, "steps", 64, 1, 512),
                )
            ),
        ),
        Route(
            "/api/exemplars.png",
            lambda r: png(unit_views.exemplars_png(session, side, *channel_of(r.query_params))),
        ),
    ]
    allowed = sorted({"127.0.0.1", "localhost", *hosts})
    return Starlette(
        routes=[Route(r.path, guarded(r.endpoint), methods=r.methods) for r in routes],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed),
            Middleware(TokenGate, token=token),
        ],
        exception_handlers={
            HttpError: _http_error,
            CnnvizError: _cnnviz_error,
            HTTPException: _starlette_error,
        },
    )


async def _http_error(request: Request, error: Exception) -> Response:
    status = getattr(error, "status", 400)
    return json_error(str(error), status)


async def _cnnviz_error(request: Request, error: Exception) -> Response:
    return json_error(str(error), 400)


async def _starlette_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = "Not found." if error.status_code == 404 else str(error.detail)
    return json_error(message, error.status_code)
