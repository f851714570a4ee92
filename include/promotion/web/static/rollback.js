// The rollback form: triggers model_rollback through Airflow's REST API (POST .../dagRuns, what Airflow's own
// trigger form calls) as the signed-in viewer (the browser sends Airflow's session cookie); Airflow checks the
// viewer's rights and the DAG's params, the DAG's validate task that they are on call. Then it follows the run
// (GET .../dagRuns/{id}, as the viewer) to its end and shows how it ended: the run's note says what was restored, or
// validate's refusal. Everything is written with textContent only.
(function () {
  var form = document.getElementById("rollback");
  if (!form) { return; }
  var out = document.getElementById("rollback-result");
  var button = form.querySelector("button");
  var target = form.querySelector("input[name=target_version]");
  var label = button.textContent;
  var POLL_MS = 2000, POLL_LIMIT = 150;  // about five minutes; a rollback takes seconds

  target.addEventListener("input", function () {
    var named = String(target.value || "").trim();
    button.textContent = named ? "Roll back to v" + named : label;
  });

  function show(parts, state) {
    out.textContent = "";
    out.dataset.state = state;
    out.append.apply(out, parts);
  }

  function runLink(runId) {
    var run = document.createElement("a");
    run.href = form.dataset.runs + encodeURIComponent(runId);
    run.target = "_top";
    run.textContent = runId;
    return run;
  }

  function backLink() {
    var back = document.createElement("a");
    back.href = form.dataset.model_page;
    back.textContent = "back to the model";
    return back;
  }

  function follow(runId, polls) {
    fetch(form.dataset.api + "/" + encodeURIComponent(runId), {credentials: "same-origin",
      headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : {state: "unknown"}; })
      .then(function (run) {
        var note = run.note ? String(run.note) : "";
        if (run.state === "success") {
          show(["Done: run ", runLink(runId), " succeeded. " + (note || "The rollback is on record.") + " ",
            backLink(), "."], "success");
        } else if (run.state === "failed") {
          button.disabled = false;
          show(["Failed: run ", runLink(runId), " ended failed, and changed nothing it could not finish. " +
            (note || "See its task logs.")], "failed");
        } else if (polls >= POLL_LIMIT) {
          show(["Run ", runLink(runId), " is still " + run.state + "; follow it in Airflow."], "running");
        } else {
          show(["Triggered run ", runLink(runId), "; it is " + (run.state || "queued") + "..."], "running");
          setTimeout(function () { follow(runId, polls + 1); }, POLL_MS);
        }
      })
      .catch(function () { setTimeout(function () { follow(runId, polls + 1); }, POLL_MS); });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    var conf = {model_name: form.dataset.model, reason: String(data.get("reason") || "").trim(),
      restore_rolled_back: data.get("restore_rolled_back") === "on"};
    var named = String(data.get("target_version") || "").trim();
    if (named) { conf.target_version = Number(named); }
    button.disabled = true;
    show(["Triggering..."], "running");
    fetch(form.dataset.api, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({logical_date: null, conf: conf})})
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            button.disabled = false;
            show(["Refused (" + response.status + "): " + JSON.stringify(body.detail || body)], "failed");
            return;
          }
          follow(body.dag_run_id, 0);
        });
      })
      .catch(function (error) { button.disabled = false; show(["Failed: " + error], "failed"); });
  });
})();
