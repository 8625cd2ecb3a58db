// Live updates for the hub's pages. The pages work without this script; with it, when the hub
// reports a change the page shows (the kinds in <body data-live-on>), the page is fetched again
// and each part marked data-live is swapped in, with the title (its pending count) and the
// navigation. A part the owner is typing in is left alone until the next change.
(function () {
  "use strict";
  var kinds = (document.body.getAttribute("data-live-on") || "").split(" ").filter(Boolean);
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var pending = null;
  var busy = false;

  function typingIn(part) {
    var active = document.activeElement;
    return active && part.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  function refresh() {
    pending = null;
    if (busy) { schedule(); return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        // Signed out or an error page: leave the page as it is.
        if (!response.ok || response.redirected) return null;
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        var next = new DOMParser().parseFromString(html, "text/html");
        document.title = next.title;
        next.querySelectorAll("[data-live]").forEach(function (part) {
          var here = document.querySelector('[data-live="' + part.getAttribute("data-live") + '"]');
          // Unchanged parts stay as they are (with the owner's scroll and selection in them).
          if (here && here.outerHTML !== part.outerHTML && !typingIn(here)) {
            here.replaceWith(document.importNode(part, true));
          }
        });
        document.dispatchEvent(new CustomEvent("machinomy:refreshed"));
      })
      .catch(function () { /* the hub is restarting: the next event refreshes */ })
      .then(function () { busy = false; });
  }

  // Changes often come in bursts (a payment and its channel): one fetch for a burst.
  function schedule() {
    if (pending === null) pending = window.setTimeout(refresh, 200);
  }

  var source = new EventSource("/api/v1/events");
  // The navigation's pending count is on every page.
  kinds.concat(["approval", "resync"]).forEach(function (kind) {
    source.addEventListener(kind, schedule);
  });
  // Whatever happened between this page's rendering and the stream's (re)connection is shown:
  // one refresh each time the stream opens.
  source.addEventListener("open", schedule);
})();
