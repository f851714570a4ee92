// Shows each <time datetime="...Z"> in the viewer's time zone: the one chosen in the Airflow UI (kept in the
// browser's localStorage) when it is a valid IANA name, else the browser's own.
(function () {
  var zone;
  try { zone = JSON.parse(localStorage.getItem("timezone") || "null"); } catch (e) { zone = null; }
  var parts = {year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", timeZoneName: "short"};
  var fmt;
  try { fmt = new Intl.DateTimeFormat(undefined, Object.assign({timeZone: zone || undefined}, parts)); }
  catch (e) { fmt = new Intl.DateTimeFormat(undefined, parts); }
  document.querySelectorAll("time[datetime]").forEach(function (node) {
    var moment = new Date(node.getAttribute("datetime"));
    if (!isNaN(moment)) { node.title = node.getAttribute("datetime"); node.textContent = fmt.format(moment); }
  });
})();
