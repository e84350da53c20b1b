// The live toggle: the open page polls its live region (htmx, every few seconds) only while the tab
// is visible, the toggle is on (kept in localStorage), and nothing in the region is being edited
// (a ticked checkbox, a focused field), so a refresh never throws away a selection.
(function () {
  var KEY = "jobrunner-live";

  window.jrLive = function () {
    if (document.visibilityState !== "visible") return false;
    if (localStorage.getItem(KEY) === "off") return false;
    var live = document.getElementById("live");
    if (!live) return false;
    if (live.querySelector("input[type=checkbox]:checked")) return false;
    var active = document.activeElement;
    return !(active && live.contains(active) && active.matches("input, select, textarea"));
  };

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("live-toggle");
    if (!toggle) return;
    toggle.checked = localStorage.getItem(KEY) !== "off";
    toggle.addEventListener("change", function () {
      localStorage.setItem(KEY, toggle.checked ? "on" : "off");
    });
  });
})();
