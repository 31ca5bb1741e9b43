// The client page's progressive enhancement; the page works without it.
// Served as a file under `script-src 'self'`: no inline script, no eval.
//
// 1. Live updates: every 3 s, GET the page's status (`data-status-url` on <body>, JSON
//    {"version": "..."}); when the version differs from `data-version`, load the page again
//    (`data-page-url`: a GET, also when this page answered a POST). Not while a code is being
//    typed. A 404 (the link stopped being valid) loads the page too, which then says so.
//    A finished page (Done) has no `data-status-url`: nothing to poll.
// 2. Countdowns: an element with `data-available-at="<RFC 3339>"` holds a `.countdown` that
//    counts down to it ("0:45"), then the element says `data-ready` ("Available now").
(function () {
  'use strict';

  var body = document.body;
  var statusUrl = body.getAttribute('data-status-url');
  var pageUrl = body.getAttribute('data-page-url');
  var version = body.getAttribute('data-version');
  var POLL_MS = 3000;
  var leaving = false;

  function typing() {
    var input = document.getElementById('code');
    return !!(input && input.value !== '');
  }

  function reload() {
    if (leaving) return;
    leaving = true;
    window.location.replace(pageUrl || window.location.pathname);
  }

  function poll() {
    // Not while hidden, nor while the browser prerenders the page (the first poll counts as
    // the client opening the link).
    if (leaving || document.hidden || document.prerendering) return;
    window.fetch(statusUrl, {
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { Accept: 'application/json' }
    }).then(function (response) {
      if (response.status === 404) {
        reload();
        return null;
      }
      return response.ok ? response.json() : null;
    }).then(function (status) {
      if (status && status.version && status.version !== version && !typing()) {
        reload();
      }
    }).catch(function () {
      // Offline or the server is restarting: try again at the next tick.
    });
  }

  function pad(n) {
    return n < 10 ? '0' + n : String(n);
  }

  function countdownText(secs) {
    var h = Math.floor(secs / 3600);
    var m = Math.floor((secs % 3600) / 60);
    var s = secs % 60;
    return h > 0 ? h + ':' + pad(m) + ':' + pad(s) : m + ':' + pad(s);
  }

  function tick() {
    var items = document.querySelectorAll('[data-available-at]');
    for (var i = 0; i < items.length; i++) {
      var el = items[i];
      var at = Date.parse(el.getAttribute('data-available-at'));
      if (isNaN(at)) continue;
      var secs = Math.ceil((at - Date.now()) / 1000);
      var counter = el.querySelector('.countdown');
      if (secs <= 0 || !counter) {
        el.textContent = el.getAttribute('data-ready') || '';
        el.removeAttribute('data-available-at');
      } else {
        counter.textContent = countdownText(secs);
      }
    }
  }

  if (statusUrl && version && window.fetch) {
    window.setInterval(poll, POLL_MS);
  }
  tick();
  window.setInterval(tick, 1000);
})();
