// Follows a run's log live: Server-Sent Events from /api/v1/runs/<id>/log/stream.
// The server masks every line; this only appends text (never HTML) and shows the end.
"use strict";
(function () {
  const pre = document.getElementById("log");
  const state = document.getElementById("log-state");
  if (!pre || !pre.dataset.stream || !window.EventSource) return;
  const source = new EventSource(pre.dataset.stream);
  pre.textContent = "";
  state.textContent = "streaming…";
  source.addEventListener("log", function (event) {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(event.data + "\n"));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", function (event) {
    source.close();
    state.textContent = "finished: " + event.data;
    state.dataset.finished = event.data;
  });
  source.onerror = function () {
    // EventSource reconnects by itself (with Last-Event-ID); say so meanwhile.
    if (source.readyState !== EventSource.CLOSED) state.textContent = "reconnecting…";
  };
})();
