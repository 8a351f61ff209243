// docpipe console: live updates by polling the console's JSON endpoints (no libraries).
// Only the parts that change are swapped; the filter form is never touched, so a filter
// being typed survives every refresh (the poll uses the filter the page was loaded with).
(function () {
  "use strict";

  function poll(url, everyMs, apply) {
    var busy = false, stopped = false, timer = null;
    function tick() {
      if (busy || stopped) return;
      busy = true;
      fetch(url, {headers: {"Accept": "application/json"}, cache: "no-store"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data && apply(data) === false) stop(); })
        .catch(function () { /* the stack may be restarting: try again next tick */ })
        .then(function () { busy = false; });
    }
    function stop() { stopped = true; if (timer) clearInterval(timer); }
    timer = setInterval(tick, everyMs);
    return stop;
  }

  function setText(el, text) { if (el && el.textContent !== String(text)) el.textContent = text; }

  // ---- executions list: tbody and counts every 2 s
  var list = document.querySelector("table#executions[data-poll]");
  if (list) {
    poll(list.getAttribute("data-poll") + window.location.search, 2000, function (data) {
      var tbody = list.querySelector("tbody");
      if (tbody.innerHTML !== data.tbody) tbody.innerHTML = data.tbody;
      Object.keys(data.counts).forEach(function (status) {
        setText(document.querySelector('#counts [data-count-status="' + status + '"]'), data.counts[status]);
      });
      setText(document.getElementById("total"), data.total);
      setText(document.getElementById("page"), data.page);
      setText(document.getElementById("pages"), data.pages);
    });
  }

  // ---- one execution: graph, states and status every 1 s until it ends
  var execution = document.querySelector("#execution[data-poll]");
  var TERMINAL = ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"];
  if (execution && TERMINAL.indexOf(execution.getAttribute("data-status")) < 0) {
    poll(execution.getAttribute("data-poll"), 1000, function (data) {
      var graph = document.getElementById("graph");
      if (graph.innerHTML !== data.svg) graph.innerHTML = data.svg;
      var tbody = document.querySelector("table#states tbody");
      if (tbody.innerHTML !== data.states_html) {
        // keep the input/output panels the reader opened
        var open = [];
        tbody.querySelectorAll("details[open]").forEach(function (d) {
          open.push([d.closest("tr").getAttribute("data-state"), d.getAttribute("data-io")]);
        });
        tbody.innerHTML = data.states_html;
        open.forEach(function (o) {
          tbody.querySelectorAll("tr.state").forEach(function (tr) {
            if (tr.getAttribute("data-state") !== o[0]) return;
            var d = tr.querySelector('details[data-io="' + o[1] + '"]');
            if (d) d.open = true;
          });
        });
      }
      execution.setAttribute("data-status", data.status);
      var badge = document.getElementById("execution-status");
      setText(badge, data.status);
      badge.className = "badge status-" + data.status.toLowerCase();
      setText(document.getElementById("execution-duration"), data.duration);
      setText(document.querySelector("pre.execution-output"), data.output || "—");
      if (TERMINAL.indexOf(data.status) >= 0) return false;  // stop polling
    });
  }
})();
