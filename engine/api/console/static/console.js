// geopush console: live updates. The visit feed is the API's SSE stream (the browser's own
// EventSource; the sign-in cookie authenticates it); each event re-fetches the server-rendered
// fragments. No framework, nothing loaded from elsewhere.
(function () {
  "use strict";
  var d = document.body.dataset;
  var live = document.getElementById("live");
  var pending = {};
  var timer = null;

  function refresh(name, target) {
    var url = d.base + "/fragment/" + name + "?range=" + encodeURIComponent(d.range);
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) { window.location = "/console/login"; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null) { document.getElementById(target).innerHTML = html; }
    }).catch(function () {});
  }

  function soon(names) {
    names.forEach(function (n) { pending[n] = true; });
    if (timer) { return; }
    timer = setTimeout(function () {
      timer = null;
      var todo = Object.keys(pending); pending = {};
      todo.forEach(function (n) { refresh(n, n === "walkins" ? "walkins" : n); });
    }, 100);
  }

  if (window.EventSource && d.stream) {
    var es = new EventSource(d.stream);
    es.onopen = function () { live.className = "live on"; };
    es.onerror = function () { live.className = "live off"; };
    es.addEventListener("visit", function (ev) {
      live.className = "live on";
      soon(["walkins", "funnel", "map"]);
    });
  }
  setInterval(function () { refresh("funnel", "funnel"); refresh("walkins", "walkins"); }, 5000);
})();
