// Light or dark as chosen in Airflow: Airflow 3.3's UI (next-themes) puts the class "light" or "dark" on its own
// <html> and keeps the choice in localStorage under "theme" ("light", "dark" or "system"). Framed by Airflow, the
// page reads the top document's class (same origin) and follows its changes; opened directly, the stored choice.
// "system" or nothing: the stylesheet follows the operating system (prefers-color-scheme). Loaded in <head>, so the
// page is drawn in the right colours from the start.
(function () {
  var root = document.documentElement;
  var framed = window.top !== window;

  function chosen() {
    try {
      if (framed) {
        var classes = window.top.document.documentElement.classList;
        if (classes.contains("dark")) { return "dark"; }
        if (classes.contains("light")) { return "light"; }
      }
    } catch (error) { /* not Airflow's window: fall back to the stored choice */ }
    try {
      var stored = window.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") { return stored; }
    } catch (error) { /* storage refused: the system's preference */ }
    return null;
  }

  function apply() {
    var theme = chosen();
    if (theme) { root.setAttribute("data-theme", theme); } else { root.removeAttribute("data-theme"); }
  }

  apply();
  window.addEventListener("storage", function (event) { if (event.key === "theme") { apply(); } });
  try {
    if (framed) {
      new MutationObserver(apply).observe(window.top.document.documentElement,
        {attributes: true, attributeFilter: ["class"]});
    }
  } catch (error) { /* nothing to follow */ }
})();
