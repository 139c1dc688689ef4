"""A small shop on Flask, with pixelmirror.

    python examples/flask_app/app.py      # then open http://127.0.0.1:8000

Without PIXELMIRROR_ACCESS_TOKEN it talks to a local FakeGraphAPI and prints what Meta would
receive, beside the events each page fires in the browser.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flask import Flask, abort, jsonify, redirect, request
from flask.typing import ResponseReturnValue

from pixelmirror import PixelMirror, current_event, track

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import demo
import shop

app = Flask(__name__)
mirror = PixelMirror(**demo.demo_settings())
mirror.init_app(app)


@app.get("/")
def home() -> str:
    return shop.home_page()


@app.get("/product/<sku>")
@track("ViewContent")
def product(sku: str) -> str:
    if sku not in shop.PRODUCTS:
        abort(404)
    current_event().custom_data.update(shop.product_data(sku))
    return shop.product_page(sku)


@app.post("/api/cart")
@track("AddToCart")
def add_to_cart() -> ResponseReturnValue:
    sku = (request.get_json(silent=True) or {}).get("sku")
    if sku not in shop.PRODUCTS:
        return jsonify(error="unknown sku"), 400
    current_event().custom_data.update(shop.product_data(sku))
    return jsonify(ok=True, sku=sku)


@app.post("/checkout")
@track("Purchase")
def checkout() -> ResponseReturnValue:
    sku = request.form.get("sku", "")
    if sku not in shop.PRODUCTS:
        abort(400)
    event = current_event()
    event.custom_data.update(shop.product_data(sku), order_id=f"A-{event.event_id[:8]}")
    event.user_data.update(email=request.form.get("email"))  # hashed; never in a page
    event.server_only.update(margin=0.4, predicted_ltv=120.0)  # CAPI only
    return redirect("/thanks", code=303)


@app.get("/thanks")
def thanks() -> str:
    return shop.thanks_page()


if __name__ == "__main__":
    print(demo.start_up_note("http://127.0.0.1:8000/"), flush=True)
    app.run(host="127.0.0.1", port=8000)
