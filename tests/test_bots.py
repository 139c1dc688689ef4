from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from identitykit import (
    CHROME,
    FIREFOX,
    HEADLESS,
    IOS_SAFARI,
    KEY,
    NOW,
    SAFARI,
    make,
    request,
)
from pixelmirror.bots import is_crawler
from pixelmirror.facts import RequestFacts
from pixelmirror.mirror import PixelMirror

# --------------------------------------------------------------------------------------------
# Bots

WEBKIT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko"
BOTS = {
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)"
    ),
    "adsbot": "AdsBot-Google (+http://www.google.com/adsbot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "yandex": "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "yandex-images": "Mozilla/5.0 (compatible; YandexImages/3.0; +http://yandex.com/bots)",
    "baidu": "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "duckduckbot": "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "slurp": "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
    "applebot": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)"
    ),
    "ahrefs": "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "semrush": "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "mj12": "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
    "petalbot": "Mozilla/5.0 (compatible;PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
    "bytespider": (
        "Mozilla/5.0 (Linux; Android 5.0) (compatible; Bytespider; spider-feedback@bytedance.com)"
    ),
    "gptbot": f"{WEBKIT}; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "chatgpt-user": f"{WEBKIT}); compatible; ChatGPT-User/1.0; +https://openai.com/bot",
    "ccbot": "CCBot/2.0 (https://commoncrawl.org/faq/)",
    "claudebot": f"{WEBKIT}; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)",
    "perplexitybot": f"{WEBKIT}; compatible; PerplexityBot/1.0; +https://perplexity.ai/bot)",
    "amazonbot": f"{WEBKIT}; compatible; Amazonbot/0.1; +https://developer.amazon.com/amazonbot)",
    "facebookexternalhit": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "facebookcatalog": "facebookcatalog/1.0",
    "meta-externalagent": "meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
    "meta-externalfetcher": "meta-externalfetcher/1.1",
    "twitterbot": "Twitterbot/1.0",
    "generic-crawler": "SomeCrawler/1.0",
    "curl": "curl/8.5.0",
    "wget": "Wget/1.21.4",
    "python-requests": "python-requests/2.31.0",
    "httpx": "python-httpx/0.27.0",
    "go": "Go-http-client/2.0",
    # link-preview fetchers: no JavaScript either
    "whatsapp": "WhatsApp/2.23.20.0 A",
    "whatsapp-ios": "WhatsApp/2.24.8.85 i",
    "slackbot-link-expanding": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "slack-imgproxy": "Slack-ImgProxy (+https://api.slack.com/robots)",
    "skype-preview": "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "telegram": "TelegramBot (like TwitterBot)",
    "discord": "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "googleother": "GoogleOther",
    "googleother-mobile": (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36 (compatible; GoogleOther)"
    ),
    "google-site-verification": "Mozilla/5.0 (compatible; Google-Site-Verification/1.0)",
    "google-inspectiontool": ("Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)"),
    "meta-externalads": (
        "meta-externalads/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)"
    ),
    "perplexity-user": (
        f"{WEBKIT}; compatible; Perplexity-User/1.0; +https://perplexity.ai/perplexity-user)"
    ),
    # HTTP libraries, wherever they are named
    "aiohttp-after-python": "Python/3.11 aiohttp/3.9.5",
    "go-in-compatible": "Mozilla/5.0 (compatible; Go-http-client/1.1)",
    "apache-httpclient": "Apache-HttpClient/4.5.14 (Java/17.0.9)",
    "okhttp": "okhttp/4.12.0",
    "requests-at-the-end": "Mozilla/5.0 (X11; Linux x86_64) python-requests/2.31.0",
    "node-fetch": "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "dalvik": "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP1A.240405.002)",
    "empty": "",
    "blank": "   ",
}

ANDROID_WV = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36"
)
IOS_APP = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
# Real browsers and in-app browsers: they run the pixel, so none may ever count as a crawler.
BROWSERS = {
    "chrome": CHROME,
    "chrome-mac": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36"
    ),
    "chrome-android": (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36"
    ),
    "chrome-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1"
    ),
    "safari": SAFARI,
    "ios-safari": IOS_SAFARI,
    "ipad-safari": (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1"
    ),
    "firefox": FIREFOX,
    "firefox-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
    ),
    "firefox-android": "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
    "firefox-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) FxiOS/133.0 Mobile/15E148 Safari/605.1.15"
    ),
    "edge": CHROME + " Edg/124.0.2478.51",
    "edge-android": (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36 EdgA/131.0.0.0"
    ),
    "edge-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.0 EdgiOS/131.2903.68 Mobile/15E148 Safari/605.1.15"
    ),
    "opera": CHROME + " OPR/115.0.0.0",
    "ie11": "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "ie10": "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1; Trident/6.0)",
    "samsung": (
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
    ),
    "google-app": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) GSA/343.0.695551749 Mobile/15E148 Safari/604.1"
    ),
    # Meta's own in-app browsers
    "facebook-in-app": f"{IOS_APP} [FBAN/FBIOS;FBAV/458.0.0.38.108;FBBV/577146420]",
    "facebook-in-app-full": (
        f"{IOS_APP} [FBAN/FBIOS;FBAV/490.0.0.40.107;FBBV/660839245;FBDV/iPhone15,3;FBMD/iPhone;"
        "FBSN/iOS;FBSV/17.4;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/662370178]"
    ),
    "facebook-android": f"{ANDROID_WV} [FB_IAB/FB4A;FBAV/462.0.0.41.83;]",
    "metaiab-facebook": f"{ANDROID_WV} MetaIAB Facebook",
    "messenger-android": f"{ANDROID_WV} [FB_IAB/Orca-Android;FBAV/451.0.0.48.109;]",
    "messenger-ios": f"{IOS_APP} [FBAN/MessengerLiteForiOS;FBAV/451.0.0.29.108;FBBV/596003217]",
    "instagram-in-app": (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36 Instagram 329.0.0.41.93 Android"
    ),
    "instagram-ios": (
        f"{IOS_APP} Instagram 329.0.3.29.108 (iPhone14,2; iOS 17_4; en_US; en; scale=3.00; "
        "1170x2532; 597349282)"
    ),
    "instagram-android-full": (
        f"{ANDROID_WV} Instagram 406.0.0.58.159 Android (35/15; 450dpi; 1080x2400; OnePlus; "
        "CPH2557; OP5D0DL1; qcom; en_US; 824871342)"
    ),
    "threads": f"{ANDROID_WV} Barcelona 330.0.0.26.88 Android (34/14; 450dpi; 1080x2340)",
    "meta-quest": (
        "Mozilla/5.0 (X11; Linux x86_64; Quest 3) AppleWebKit/537.36 (KHTML, like Gecko) "
        "OculusBrowser/33.0.0.0 SamsungBrowser/4.0 Chrome/126.0.6478.122 VR Safari/537.36"
    ),
    "whatsapp-in-app": f"{ANDROID_WV} WhatsApp/2.24.8.85",
    # other apps' in-app browsers
    "tiktok": (
        f"{ANDROID_WV} trill_310703 JsSdk/1.0 NetType/WIFI Channel/googleplay "
        "AppName/musical_ly app_version/31.7.3 ByteLocale/en ByteFullLocale/en Region/US "
        "AppId/1233 Spark/1.4.6.3-bugfix AppVersion/31.7.3 BytedanceWebview/d8a21c6"
    ),
    "tiktok-ios": (
        f"{IOS_APP} musical_ly_34.5.0 JsSdk/2.0 NetType/WIFI Channel/App Store "
        "ByteLocale/en Region/US isDarkMode/0 WKWebView/1 RevealType/Dialog "
        "BytedanceWebview/d8a21c6"
    ),
    "wechat-ios": f"{IOS_APP} MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN",
    "wechat-android": (
        f"{ANDROID_WV} XWEB/1160065 MMWEBSDK/20240301 MMWEBID/6533 "
        "MicroMessenger/8.0.48.2580(0x28003035) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN "
        "ABI/arm64"
    ),
    "snapchat": f"{IOS_APP} Snapchat/13.10.0.41 (like Safari/8617.1.17.10.9, panda)",
    "pinterest": f"{ANDROID_WV} [Pinterest/Android]",
    "linkedin": f"{IOS_APP} [LinkedInApp]/9.30.1466",
    "line": f"{IOS_APP} Safari Line/14.5.0",
    "twitter": f"{ANDROID_WV} TwitterAndroid",
    "cubot-phone": (
        "Mozilla/5.0 (Linux; Android 9; CUBOT P30) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36"
    ),
    "headless-chrome": HEADLESS,  # not a bot: it runs the pixel, and so do our browser tests
}


@pytest.mark.parametrize("ua", [pytest.param(ua, id=name) for name, ua in BOTS.items()])
def test_bots_get_nothing(ua: str) -> None:
    assert make().resolve(request(ua=ua), now=NOW) is None
    assert make(bot_filter=False).resolve(request(ua=ua), now=NOW) is not None


@pytest.mark.parametrize("ua", [pytest.param(ua, id=name) for name, ua in BROWSERS.items()])
def test_browsers_are_visitors(ua: str) -> None:
    visitor = make().resolve(request(ua=ua), now=NOW)
    assert visitor is not None
    assert visitor.user_agent == ua


def test_a_missing_user_agent_is_a_bot() -> None:
    assert make().resolve(request(ua=None), now=NOW) is None
    visitor = make(bot_filter=False).resolve(request(ua=None), now=NOW)
    assert visitor is not None
    assert visitor.user_agent is None


# --------------------------------------------------------------------------------------------
# The crawler filter against a maintained public list of crawler user agents (tests/data)

# Entries of the list (by their pattern) that are browsers a person uses: they run the pixel.
LISTED_BROWSERS = {
    "HeadlessChrome": "Chrome without a window: it runs the pixel, and our browser tests use it",
    "MetaIAB Facebook": "Meta's own in-app browser",
    "AP3A\\.240617\\.008": "an Android build whose Instagram in-app browser bots also copy",
    "Code\\/1\\.": "Visual Studio Code's built-in browser (Electron)",
    "Trae\\/": "the Trae editor's built-in browser (Electron)",
    "Fluid": "Fluid, a macOS site-specific browser",
}


def _listed_crawlers() -> list[Any]:
    path = Path(__file__).parent / "data" / "crawler-user-agents.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    return [
        pytest.param(ua, id=f"{entry['pattern'][:40]}#{n}")
        for entry in entries
        if entry["pattern"] not in LISTED_BROWSERS
        for n, ua in enumerate(entry.get("instances", []))
    ]


def test_the_public_crawler_list_is_read_whole() -> None:
    # A format change upstream must fail loudly, not quietly test nothing.
    assert len(_listed_crawlers()) > 2000


@pytest.mark.parametrize("ua", _listed_crawlers())
def test_every_listed_crawler_is_flagged(ua: str) -> None:
    assert is_crawler(ua)


def test_the_listed_exceptions_are_in_the_list_and_look_like_browsers() -> None:
    path = Path(__file__).parent / "data" / "crawler-user-agents.json"
    listed = {entry["pattern"]: entry["instances"] for entry in json.loads(path.read_text())}
    for pattern in LISTED_BROWSERS:
        assert listed[pattern], pattern
        assert not any(is_crawler(ua) for ua in listed[pattern]), pattern


@pytest.mark.parametrize("ua", [pytest.param(ua, id=name) for name, ua in BROWSERS.items()])
def test_no_browser_is_a_crawler(ua: str) -> None:
    assert not is_crawler(ua)


@pytest.mark.parametrize("ua", [WEBKIT, CHROME, HEADLESS, FIREFOX, *BOTS.values()])
def test_the_crawler_verdict_ignores_case(ua: str) -> None:
    assert is_crawler(ua.upper()) is is_crawler(ua.lower()) is is_crawler(ua)


def test_user_agents_too_long_to_cache_get_the_same_verdict() -> None:
    padding = " " + "a" * 1000
    assert not is_crawler(CHROME + padding)
    assert is_crawler(CHROME + " AhrefsBot/7.0" + padding)
    assert is_crawler("x" * 5000)


# --------------------------------------------------------------------------------------------
# A site's own crawler rules


def _monitor_is_bot(facts: RequestFacts) -> bool:
    return "AcmeMonitor" in facts.headers.get("user-agent", "")


def test_is_bot_replaces_the_built_in_check() -> None:
    identity = make(is_bot=_monitor_is_bot)
    assert identity.resolve(request(ua=f"{CHROME} AcmeMonitor/1.0"), now=NOW) is None
    # The built-in check no longer applies: curl is a visitor by this site's rules.
    assert identity.resolve(request(ua="curl/8.5.0"), now=NOW) is not None
    assert identity.resolve(request(ua=CHROME), now=NOW) is not None


def test_is_bot_can_extend_the_built_in_check() -> None:
    def is_bot(facts: RequestFacts) -> bool:
        return _monitor_is_bot(facts) or is_crawler(facts.headers.get("user-agent"))

    identity = make(is_bot=is_bot)
    assert identity.resolve(request(ua=f"{CHROME} AcmeMonitor/1.0"), now=NOW) is None
    assert identity.resolve(request(ua="curl/8.5.0"), now=NOW) is None
    assert identity.resolve(request(ua=CHROME), now=NOW) is not None


def test_pixelmirror_passes_is_bot_to_its_identity() -> None:
    mirror = PixelMirror(pixel_id="1", secret_key=KEY, is_bot=_monitor_is_bot)
    try:
        assert mirror.pages.begin(request(ua=f"{CHROME} AcmeMonitor/1.0")) is None
        assert mirror.pages.begin(request(ua="curl/8.5.0")) is not None
    finally:
        mirror.close()


def test_bot_filter_off_also_turns_is_bot_off() -> None:
    identity = make(is_bot=lambda facts: True, bot_filter=False)
    assert identity.resolve(request(), now=NOW) is not None


def test_a_failing_is_bot_falls_back_to_the_built_in_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(facts: RequestFacts) -> bool:
        raise RuntimeError("boom")

    identity = make(is_bot=broken)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        assert identity.resolve(request(ua="curl/8.5.0"), now=NOW) is None
        assert identity.resolve(request(ua=CHROME), now=NOW) is not None
    assert "is_bot callable failed" in caplog.text


@pytest.mark.parametrize(
    ("ua", "shown"),
    [
        pytest.param("curl/8.5.0", "(curl/8.5.0)", id="curl"),
        pytest.param("python-requests/2.32.3", "(python-requests/2.32.3)", id="requests"),
        pytest.param(None, "(no User-Agent)", id="none"),
    ],
)
def test_a_request_skipped_as_a_crawler_says_why_at_debug(
    caplog: pytest.LogCaptureFixture, ua: str | None, shown: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pixelmirror"):
        assert make().resolve(request(ua=ua), now=NOW) is None
        assert make().resolve(request(ua=CHROME), now=NOW) is not None
    (record,) = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert record.name == "pixelmirror.identity"
    assert "the User-Agent looks like a crawler" in record.getMessage()
    assert shown in record.getMessage()


def test_a_request_the_is_bot_hook_skips_names_the_hook(caplog: pytest.LogCaptureFixture) -> None:
    identity = make(is_bot=_monitor_is_bot)
    with caplog.at_level(logging.DEBUG, logger="pixelmirror"):
        assert identity.resolve(request(ua=f"{CHROME} AcmeMonitor/1.0"), now=NOW) is None
    assert "the is_bot hook calls it a crawler" in caplog.text
