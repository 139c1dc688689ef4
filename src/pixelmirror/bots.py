"""The crawler filter: requests from clients that run no JavaScript get no pixel and no
server event, since the pixel would never match them."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable

from pixelmirror.config import Config
from pixelmirror.facts import RequestFacts

__all__ = ["CrawlerFilter", "is_crawler"]

_log = logging.getLogger("pixelmirror.identity")

# Crawlers, link-preview fetchers and HTTP libraries run no JavaScript: a server PageView for
# them is one the pixel never matches. One pattern, run on the lower-cased User-Agent (much
# faster than re.IGNORECASE). Its parts, in order:
# - not a browser's shape: every browser, in-app ones included, starts with "Mozilla/" (old
#   Opera with "Opera/"), so WhatsApp/2.19, Slackbot-LinkExpanding, facebookexternalhit,
#   meta-externalads, curl, Apache-HttpClient or "Python/3.11 aiohttp/3.9" are out at once;
# - what no browser says: a URL, a domain, an e-mail address, or "compatible;" but after
#   MSIE and Konqueror, which really said it ("Mozilla/5.0 (compatible; Go-http-client/1.1)",
#   Google-Site-Verification, GoogleOther, Perplexity-User);
# - words crawlers, fetchers and monitors put in their names, anywhere ("bot" but in CUBOT
#   phones, "preview" for SkypeUriPreview, "http" for most HTTP libraries);
# - by name, the few that otherwise look like a browser (Lighthouse, WebPageTest's PTST, ...),
#   and HTTP libraries wherever they are named.
# "HeadlessChrome" alone is deliberately NOT matched: it runs the pixel, and so do our browser
# tests. The tests check this pattern against a public list of crawler user agents and a table
# of browsers and in-app browsers (Meta's own among them), which must never match.
_CRAWLERS = re.compile(
    r"^(?!mozilla/|opera/)"
    r"|https?:|www\.|@|\(at\)|[a-z0-9]\.(?:com|net|org|io|ai|app|fr|de|ru)\b"
    r"|compatible(?!; msie|; konqueror)"
    r"|(?<!cu)bot|crawl|spider|scrap|slurp|fetch|preview|archiv|monitor|check|scan|proxy"
    r"|validat|index|\bhttp|httrack|client|library|feed|rss|webhook|uptime|probe|analy[sz]"
    r"|screenshot|capture|download|sitemap|harvest|reader|parser|extract|synthetic|inspect"
    r"|-google|google[- ]|googleother|googleagent|lighthouse|ptst/|pingdom|appinsights"
    r"|siteimprove|dareboost|zgrab|outbrain|ips-agent|daumoa|datanyze|hotjar|playwright"
    r"|puppeteer|selenium|gtmetrix|newsai|collapsify|cookiehub|hardenize|manus-user|nitro-"
    r"|scope3|silktide|thousandeyes|sindup|sqwatcher|turingos|\bbw/|dlc/|foregenix|linktiger"
    r"|marketgoo|miniature|pwabuilder|readable/|securityheaders|splash version|rigor\)"
    r"|testlocally|ylt chrome|watchtowr|geedo|newsnow|openvas|printfriendly"
    r"|requests/|urllib|aiohttp|okhttp|curl/|wget|java/|libwww|scrapy|axios|undici|guzzle"
)
# Verdicts by User-Agent: a site sees the same few hundred strings again and again.
_MAX_CACHED_AGENT = 512


@functools.lru_cache(maxsize=4096)
def _crawler_verdict(user_agent: str) -> bool:
    return _CRAWLERS.search(user_agent.lower()) is not None


def is_crawler(user_agent: str | None) -> bool:
    """The built-in crawler check: True for crawlers, link-preview fetchers, HTTP libraries
    and a missing or blank User-Agent; False for browsers, in-app browsers and Headless
    Chrome. Compose it in your own ``is_bot`` hook to add a site's rules."""
    if user_agent is None or not user_agent.strip():
        return True
    if len(user_agent) > _MAX_CACHED_AGENT:  # keep the cache small whatever clients send
        return _CRAWLERS.search(user_agent.lower()) is not None
    return _crawler_verdict(user_agent)


class CrawlerFilter:
    """Whether a request comes from a crawler: a site's ``is_bot`` hook, else
    :func:`is_crawler`; never, while ``bot_filter`` is off. A failing hook falls back to the
    built-in check."""

    __slots__ = ("_enabled", "_is_bot")

    def __init__(self, config: Config, is_bot: Callable[[RequestFacts], bool] | None) -> None:
        self._enabled = config.bot_filter
        self._is_bot = is_bot

    def excludes(self, facts: RequestFacts, user_agent: str | None) -> bool:
        """True when the request must be left alone as a crawler's."""
        if not self._enabled:
            return False
        why = "the User-Agent looks like a crawler"
        if self._is_bot is None:
            verdict = is_crawler(user_agent)
        else:
            try:
                verdict = bool(self._is_bot(facts))
                why = "the is_bot hook calls it a crawler"
            except Exception:
                _log.warning(
                    "the is_bot callable failed; using the built-in crawler check",
                    exc_info=True,
                )
                verdict = is_crawler(user_agent)
        if verdict:  # the first thing a curl of the Quick start meets: say why
            _log.debug(
                "skipped %s: %s (%s); the page goes out untouched, no server event",
                facts.path,
                why,
                "no User-Agent" if not user_agent else user_agent[:200],
            )
        return verdict
