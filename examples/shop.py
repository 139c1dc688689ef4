"""The pages and catalogue both example shops share; the frameworks differ, the shop doesn't."""

from __future__ import annotations

from html import escape

PRODUCTS: dict[str, tuple[str, float]] = {
    "tee": ("Pixel tee", 25.0),
    "mug": ("Mirror mug", 12.5),
}
CURRENCY = "USD"

# The front end of a JSON route: fire the browser copy with the id the server already mirrored.
_CART_SCRIPT = """
<script>
document.getElementById("add").addEventListener("click", async (event) => {
  const response = await fetch("/api/cart", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sku: event.target.dataset.sku}),
  });
  // The server mirrored AddToCart already; fire its browser twin with the same eventID.
  const fired = JSON.parse(response.headers.get("X-PixelMirror-Events") || "[]");
  if (window.pixelmirror) window.pixelmirror.fire(fired);
  document.getElementById("cart").textContent = "In your cart.";
});
</script>
"""


def page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{escape(title)}</title>\n</head>\n<body>\n"
        f'<nav><a href="/">Shop</a></nav>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n'
    )


def home_page() -> str:
    items = "".join(
        f'<li><a href="/product/{sku}">{escape(name)}</a> ${price:.2f}</li>'
        for sku, (name, price) in PRODUCTS.items()
    )
    return page("pixelmirror shop", f"<ul>{items}</ul>")


def product_page(sku: str) -> str:
    name, price = PRODUCTS[sku]
    return page(
        name,
        f"<p>${price:.2f}</p>\n"
        f'<button id="add" data-sku="{sku}">Add to cart</button> <span id="cart"></span>\n'
        '<form method="post" action="/checkout">\n'
        f'<input type="hidden" name="sku" value="{sku}">\n'
        '<input type="email" name="email" placeholder="you@example.com" required>\n'
        '<button id="buy" type="submit">Buy now</button>\n</form>\n' + _CART_SCRIPT,
    )


def thanks_page() -> str:
    return page("Thank you", "<p>Your order is on its way.</p>")


def product_data(sku: str) -> dict[str, object]:
    """custom_data both channels see for a product."""
    name, price = PRODUCTS[sku]
    return {
        "content_ids": [sku],
        "content_type": "product",
        "content_name": name,
        "value": price,
        "currency": CURRENCY,
    }
