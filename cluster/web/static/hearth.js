// Live parts of Hearth's pages. An element with data-live="URL" opens one EventSource; each element
// inside it (or itself) with data-swap="NAME" takes the HTML of the server's "NAME" events: replaced,
// or appended with data-mode="append". The browser reconnects by itself and resends Last-Event-ID.
(function () {
  "use strict";
  function connect(root) {
    var source = new EventSource(root.dataset.live);
    var dot = document.querySelector(".live-dot");
    source.onopen = function () { if (dot) dot.classList.add("on"); };
    source.onerror = function () { if (dot) dot.classList.remove("on"); };
    var targets = Array.prototype.slice.call(root.querySelectorAll("[data-swap]"));
    if (root.dataset.swap) targets.push(root);
    targets.forEach(function (el) {
      source.addEventListener(el.dataset.swap, function (event) {
        if (el.dataset.mode === "append") {
          el.insertAdjacentHTML("beforeend", event.data);
        } else {
          var typing = el.contains(document.activeElement) && document.activeElement.value;
          if (typing) return; // never wipe what someone is typing; the next change brings it again
          el.innerHTML = event.data;
        }
        if (window.htmx) window.htmx.process(el);
      });
    });
    source.addEventListener("inbox", function (event) {
      var count = document.getElementById("inbox-count");
      if (count) { count.textContent = event.data; count.classList.toggle("zero", event.data === "0"); }
    });
  }
  // No inline handlers (the Content-Security-Policy forbids them): behaviour hangs off data- attributes.
  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("[data-autosubmit]")) event.target.form.submit();
  });
  document.addEventListener("submit", function (event) {
    var question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(connect);
  });
})();
