"""A small shop on Django, with pixelmirror: a single-file project.

    python examples/django_app/app.py      # then open http://127.0.0.1:8002

Without PIXELMIRROR_ACCESS_TOKEN it talks to a local FakeGraphAPI and prints what Meta would
receive, beside the events each page fires in the browser.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import django
from django.conf import settings
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
)
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from pixelmirror import current_event, track

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import demo
import shop

SETTINGS = {
    "DEBUG": True,
    "SECRET_KEY": "django-example-secret-key-not-for-production",
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
    "ROOT_URLCONF": __name__,
    "MIDDLEWARE": [
        "django.middleware.gzip.GZipMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "pixelmirror.django.PixelMirrorMiddleware",  # inside GZip: it sees the page's HTML
    ],
    **{f"PIXELMIRROR_{name.upper()}": value for name, value in demo.demo_settings().items()},
}
if not settings.configured:  # a test process may have set Django up already
    settings.configure(**SETTINGS)
    django.setup()


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(shop.home_page())


@track("ViewContent")
async def product(request: HttpRequest, sku: str) -> HttpResponse:
    if sku not in shop.PRODUCTS:
        raise Http404
    current_event().custom_data.update(shop.product_data(sku))
    return HttpResponse(shop.product_page(sku))


@csrf_exempt  # the shared shop pages carry no CSRF token; a real shop's would
@track("AddToCart")
def add_to_cart(request: HttpRequest) -> HttpResponse:
    sku = json.loads(request.body or b"{}").get("sku")
    if sku not in shop.PRODUCTS:
        return JsonResponse({"error": "unknown sku"}, status=400)
    current_event().custom_data.update(shop.product_data(sku))
    return JsonResponse({"ok": True, "sku": sku})


@method_decorator(csrf_exempt, name="dispatch")  # as above
@method_decorator(track("Purchase"), name="post")
class Checkout(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        sku = request.POST.get("sku", "")
        if sku not in shop.PRODUCTS:
            return HttpResponseBadRequest("unknown sku")
        event = current_event()
        event.custom_data.update(shop.product_data(sku), order_id=f"A-{event.event_id[:8]}")
        event.user_data.update(email=request.POST.get("email"))  # hashed; never in a page
        event.server_only.update(margin=0.4, predicted_ltv=120.0)  # CAPI only
        return HttpResponseRedirect("/thanks", status=303)


def thanks(request: HttpRequest) -> HttpResponse:
    return HttpResponse(shop.thanks_page())


urlpatterns = [
    path("", home),
    path("product/<str:sku>", product),
    path("api/cart", add_to_cart),
    path("checkout", Checkout.as_view()),
    path("thanks", thanks),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], "runserver", "127.0.0.1:8002", "--noreload"])
