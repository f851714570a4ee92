// Links inside Airflow's frame. The Airflow UI shows these pages in an iframe sandboxed without allow-top-navigation
// and allow-popups, so there the browser refuses a link to an Airflow page (target="_top") or to MLflow
// (target="_blank"): "Unsafe attempt to initiate navigation ... sandboxed". Framed by the Airflow UI (same origin, so
// its window is reachable), a click on such a link is carried out by the top window instead:
// - an Airflow page: through the UI's own router, with history.pushState on the top window and a popstate event,
//   which react-router follows (no reload, the back button returns to this view);
// - MLflow (another site), or any such link clicked with ctrl, cmd, shift or the middle button: a link made in the
//   top document and clicked during the viewer's click, so a new tab opens as it would from Airflow itself.
// Opened directly (not framed), every link is a plain link and this script does nothing.
(function () {
  var top = null;
  try {
    if (window.top !== window && window.top.location.origin === window.location.origin) { top = window.top; }
  } catch (e) { top = null; }  // framed by another origin: its window is out of reach, the links stay as they are
  if (!top) { return; }

  function newTab(href) {
    var a = top.document.createElement("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    top.document.body.appendChild(a);
    a.click();
    a.remove();
  }

  function route(href) {
    var state = top.history.state || {};
    var idx = typeof state.idx === "number" ? state.idx + 1 : 0;
    top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: idx}, "", href);
    top.dispatchEvent(new top.PopStateEvent("popstate", {state: top.history.state}));
  }

  function follow(event) {
    if (event.defaultPrevented || event.button > 1) { return; }  // "click": the left button; "auxclick": the middle
    var link = event.target.closest ? event.target.closest("a[href]") : null;
    if (!link || (link.target !== "_top" && link.target !== "_blank")) { return; }
    var url = new URL(link.href, document.baseURI);
    var aside = event.button === 1 || event.ctrlKey || event.metaKey || event.shiftKey;
    event.preventDefault();
    if (link.target === "_blank" || aside || url.origin !== top.location.origin) {
      newTab(url.href);
    } else {
      route(url.pathname + url.search + url.hash);
    }
  }

  document.addEventListener("click", follow);
  document.addEventListener("auxclick", follow);
})();
