"""A small shop on Starlette (FastAPI works the same way), with pixelmirror.

    python examples/starlette_app/app.py      # then open http://127.0.0.1:8001

Without PIXELMIRROR_ACCESS_TOKEN it talks to a local FakeGraphAPI and prints what Meta would
receive, beside the events each page fires in the browser.
"""

from __future__ import annotations

import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from pixelmirror import PixelMirror, PixelMirrorMiddleware, current_event, track

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import demo
import shop

mirror = PixelMirror(**demo.demo_settings())


async def home(request: Request) -> Response:
    return HTMLResponse(shop.home_page())


@track("ViewContent")
async def product(request: Request) -> Response:
    sku = request.path_params["sku"]
    if sku not in shop.PRODUCTS:
        return HTMLResponse(shop.page("Not found", ""), status_code=404)
    current_event().custom_data.update(shop.product_data(sku))
    return HTMLResponse(shop.product_page(sku))


@track("AddToCart")
async def add_to_cart(request: Request) -> Response:
    sku = (await request.json()).get("sku")
    if sku not in shop.PRODUCTS:
        return JSONResponse({"error": "unknown sku"}, status_code=400)
    current_event().custom_data.update(shop.product_data(sku))
    return JSONResponse({"ok": True, "sku": sku})


@track("Purchase")
async def checkout(request: Request) -> Response:
    form = await request.form()
    sku = str(form.get("sku", ""))
    if sku not in shop.PRODUCTS:
        return JSONResponse({"error": "unknown sku"}, status_code=400)
    event = current_event()
    event.custom_data.update(shop.product_data(sku), order_id=f"A-{event.event_id[:8]}")
    event.user_data.update(email=form.get("email"))  # hashed; never in a page
    event.server_only.update(margin=0.4, predicted_ltv=120.0)  # CAPI only
    return RedirectResponse("/thanks", status_code=303)


async def thanks(request: Request) -> Response:
    return HTMLResponse(shop.thanks_page())


app = Starlette(
    routes=[
        Route("/", home),
        Route("/product/{sku}", product),
        Route("/api/cart", add_to_cart, methods=["POST"]),
        Route("/checkout", checkout, methods=["POST"]),
        Route("/thanks", thanks),
    ],
    middleware=[Middleware(PixelMirrorMiddleware, mirror=mirror)],
)

if __name__ == "__main__":
    import uvicorn

    print(demo.start_up_note("http://127.0.0.1:8001/"), flush=True)
    uvicorn.run(app, host="127.0.0.1", port=8001)
