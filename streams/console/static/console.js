// The console's one script: the overview's live part. Every data-refresh seconds it fetches
// the part's fragment (data-fragment) and puts it in place, so the page around it, and where
// it is scrolled to, stays. Without script the page reloads itself (its <noscript> refresh).
// The fragment is the console's own autoescaped HTML; a failed fetch marks the part stale.
(function () {
  "use strict";
  var live = document.querySelector("[data-fragment]");
  if (!live) {
    return;
  }
  var every = 1000 * Number(live.getAttribute("data-refresh") || "10");

  function refresh() {
    fetch(live.getAttribute("data-fragment"), { credentials: "same-origin" })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("the console answered " + answer.status);
        }
        return answer.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.removeAttribute("data-stale");
      })
      .catch(function () {
        live.setAttribute("data-stale", "true");
      })
      .then(function () {
        setTimeout(refresh, every);
      });
  }

  setTimeout(refresh, every);
})();
