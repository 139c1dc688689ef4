/* A stand-in for Meta's fbevents.js, served to the test browser instead of the real library
 * (tests/test_browser.py routes https://connect.facebook.net/ here; the machines are offline).
 *
 * It does what the real library does for pixelmirror's purposes:
 * - takes over the base code's queueing `fbq` (installs `fbq.callMethod`, replays `fbq.queue`);
 * - `init` registers a pixel with its user data once; a second `init` of the same pixel is
 *   ignored with a warning, as the real library does, so the first user data wins;
 * - on the first `init` it reuses the `_fbp` cookie (refreshing its lifetime), or creates
 *   `fb.<subdomainIndex>.<ms>.<random 0..2^31-1>` on the registrable domain (host-only and
 *   index 0 on an IP or a single-label host), 90 days, not HttpOnly;
 * - `track`/`trackCustom` go to every initialised pixel, `trackSingle`/`trackSingleCustom`
 *   to the named one if initialised; each pixel hit is a GET of www.facebook.com/tr;
 * - after `fbq('consent', 'revoke')` no track call reaches a pixel until `'grant'`.
 *
 * Every call is reported to the test, with the pixels it reached (and the external_id each
 * carried) and the `_fbp` it would send, by a beacon to https://connect.facebook.net/__record
 * that the test's route handler captures, so the record survives page navigations.
 */
(function (w, d) {
  "use strict";
  var RECORD_URL = "https://connect.facebook.net/__record";
  var TR_URL = "https://www.facebook.com/tr";
  var FBP_MAX_AGE = 90 * 24 * 60 * 60;
  var fbq = w.fbq || w._fbq;
  if (!fbq || fbq.callMethod) return; // no base code, or a library already took over

  var pixels = {}; // pixel id -> user data given to its first init
  var order = []; // pixel ids in init order
  var seq = 0;
  var revoked = false;

  function readCookie(name) {
    var parts = d.cookie ? d.cookie.split("; ") : [];
    for (var i = 0; i !== parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return null;
  }

  // The widest domain that accepts a cookie is the registrable domain (the real library
  // probes the same way); IPs and single-label hosts get a host-only cookie.
  function cookieDomain() {
    var host = w.location.hostname;
    if (/^[0-9.]+$/.test(host) || host.indexOf(":") !== -1 || host.indexOf(".") === -1) {
      return null;
    }
    var labels = host.split(".");
    for (var i = labels.length - 2; i >= 0; i--) {
      var candidate = labels.slice(i).join(".");
      d.cookie = "_fbp_probe=1; Domain=" + candidate + "; Path=/";
      if (readCookie("_fbp_probe") === "1") {
        d.cookie = "_fbp_probe=; Domain=" + candidate + "; Path=/; Max-Age=0";
        return candidate;
      }
    }
    return null;
  }

  function ensureFbp() {
    var domain = cookieDomain();
    var value = readCookie("_fbp");
    if (!value) {
      var index = domain === null ? 0 : domain.split(".").length - 1;
      var random = Math.floor(Math.random() * 2147483648);
      value = "fb." + index + "." + Date.now() + "." + random;
    }
    d.cookie =
      "_fbp=" + value + (domain === null ? "" : "; Domain=" + domain) +
      "; Path=/; Max-Age=" + FBP_MAX_AGE + "; SameSite=Lax";
  }

  function plain(value) {
    try {
      return JSON.parse(JSON.stringify(value === undefined ? null : value));
    } catch (error) {
      return String(value);
    }
  }

  function record(method, args, sent) {
    var body = JSON.stringify({
      seq: seq++,
      origin: performance.timeOrigin,
      url: w.location.href,
      method: method,
      args: plain(args),
      sent: sent,
      fbp: readCookie("_fbp"),
    });
    if (!(navigator.sendBeacon && navigator.sendBeacon(RECORD_URL, body))) {
      w.fetch(RECORD_URL, { method: "POST", body: body, mode: "no-cors", keepalive: true });
    }
  }

  function hit(pixel, name, data, options) {
    var query = [
      ["id", pixel],
      ["ev", name],
      ["eid", (options && options.eventID) || ""],
      ["fbp", readCookie("_fbp") || ""],
      ["dl", w.location.href],
      ["cd", JSON.stringify(data || {})],
    ];
    var encoded = query.map(function (pair) {
      return encodeURIComponent(pair[0]) + "=" + encodeURIComponent(String(pair[1]));
    });
    new Image().src = TR_URL + "?" + encoded.join("&");
  }

  function send(targets, name, data, options) {
    var sent = [];
    for (var i = 0; i !== targets.length; i++) {
      var user = pixels[targets[i]];
      sent.push({ pixel: targets[i], external_id: (user && user.external_id) || null });
      hit(targets[i], name, data, options);
    }
    if (!targets.length) console.warn("[Meta Pixel] - " + name + " sent before any init");
    return sent;
  }

  fbq.callMethod = function () {
    var args = Array.prototype.slice.call(arguments);
    var method = args[0];
    var sent = [];
    if (method === "consent") {
      revoked = args[1] === "revoke";
    } else if (revoked) {
      // the real library sends nothing while consent is revoked
    } else if (method === "init") {
      var id = String(args[1]);
      if (Object.prototype.hasOwnProperty.call(pixels, id)) {
        console.warn("[Meta Pixel] - Duplicate Pixel ID: " + id);
      } else {
        if (!order.length) ensureFbp();
        pixels[id] = plain(args[2] || {});
        order.push(id);
      }
    } else if (method === "track" || method === "trackCustom") {
      sent = send(order.slice(), args[1], args[2], args[3]);
    } else if (method === "trackSingle" || method === "trackSingleCustom") {
      var one = String(args[1]);
      var known = Object.prototype.hasOwnProperty.call(pixels, one);
      sent = send(known ? [one] : [], args[2], args[3], args[4]);
    }
    record(method, args.slice(1), sent);
  };

  var queue = fbq.queue || [];
  fbq.queue = [];
  for (var i = 0; i !== queue.length; i++) fbq.callMethod.apply(fbq, queue[i]);
})(window, document);
