// The rollback form: triggers model_rollback through Airflow's REST API (POST .../dagRuns, what Airflow's own
// trigger form calls) as the signed-in viewer (the browser sends Airflow's session cookie); Airflow checks the
// viewer's rights and the DAG's params, the DAG's validate task that they are on call. The answer is written
// with textContent only.
(function () {
  var form = document.getElementById("rollback");
  if (!form) { return; }
  var out = document.getElementById("rollback-result");
  var button = form.querySelector("button");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    var conf = {model_name: form.dataset.model, reason: String(data.get("reason") || "").trim(),
      restore_rolled_back: data.get("restore_rolled_back") === "on"};
    var target = String(data.get("target_version") || "").trim();
    if (target) { conf.target_version = Number(target); }
    button.disabled = true;
    out.textContent = "Triggering...";
    fetch(form.dataset.api, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({logical_date: null, conf: conf})})
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            button.disabled = false;
            out.textContent = "Refused (" + response.status + "): " + JSON.stringify(body.detail || body);
            return;
          }
          out.textContent = "Triggered run ";
          var run = document.createElement("a");
          run.href = form.dataset.runs + encodeURIComponent(body.dag_run_id);
          run.target = "_top";
          run.textContent = body.dag_run_id;
          var back = document.createElement("a");
          back.href = form.dataset.model_page;
          back.textContent = "back to the model";
          out.append(run, ". It restores the version in a few seconds; its history shows it: ", back, ".");
        });
      })
      .catch(function (error) { button.disabled = false; out.textContent = "Failed: " + error; });
  });
})();
