// The pages' only script: swap in the server-rendered fragment every few seconds, and turn
// clicks and forms into calls of the JSON API. No framework, no build step, nothing fetched
// from elsewhere. The session cookie set by the login form is sent only under /ui, so the page
// calls the API through /ui/api/...; every text from the server is written with textContent,
// and the fragments swapped in with innerHTML are rendered (and escaped) by the server.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const refreshMs = Number(body.dataset.refreshMs) || 3000;
  const live = document.getElementById("live");
  const message = document.getElementById("message");
  let busy = false;
  let query = "";

  function say(text, isError) {
    if (!message) return;
    message.textContent = text;
    message.className = "message" + (isError ? " error" : "");
  }

  function loginAgain() {
    window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname);
  }

  function detailOf(data, response) {
    if (!data || data.detail === undefined) return response.status + " " + response.statusText;
    if (typeof data.detail === "string") return data.detail;
    return data.detail.map(function (d) {
      return (d.loc ? d.loc.filter(function (p) { return p !== "body"; }).join(".") + ": " : "") + d.msg;
    }).join("; ");
  }

  async function api(method, path, payload) {
    const init = {method: method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(path, init);
    if (response.status === 401) { loginAgain(); throw new Error("logged out"); }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new Error(detailOf(data, response));
    return data;
  }

  async function refresh() {
    const url = live && live.dataset.fragment;
    if (!url || busy) return;
    busy = true;
    try {
      const response = await fetch(url + query, {credentials: "same-origin"});
      if (response.status === 401) { loginAgain(); return; }
      if (!response.ok) { say("refresh failed: " + response.status + " " + response.statusText, true); return; }
      live.innerHTML = await response.text();
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      const outcome = document.getElementById("outcome");
      if (outcome && outcome.dataset.done === "yes") live.dataset.fragment = "";  // a finished job stays as it is
    } catch (e) {
      say("refresh failed: " + e.message, true);
    } finally {
      busy = false;
    }
  }

  if (page === "status") {
    live.addEventListener("click", async function (event) {
      const button = event.target.closest("button.start, button.stop");
      if (!button) return;
      const start = button.classList.contains("start");
      button.disabled = true;
      try {
        const inst = await api("POST", "/ui/api/instances/" + encodeURIComponent(button.dataset.id) +
                              (start ? "/start" : "/disable"));
        say(inst.type + ": " + (inst.enabled ? "enabled, desired " + inst.concurrency.min + "–" +
            inst.concurrency.max + " processes" : "disabled"));
        await refresh();
      } catch (e) {
        say(e.message, true);
      } finally {
        button.disabled = false;
      }
    });
  }

  if (page === "launch") {
    document.getElementById("launch").addEventListener("submit", async function (event) {
      event.preventDefault();
      const field = function (id) { return document.getElementById(id).value.trim(); };
      let args;
      try {
        args = JSON.parse(field("arguments") || "{}");
      } catch (e) {
        say("the arguments are not valid JSON: " + e.message, true);
        return;
      }
      // by id: a control named "action" would shadow the form's own .action property
      const job = {action: field("action"), arguments: args};
      if (field("queue")) job.queue = field("queue");
      if (field("idempotency_key")) job.idempotency_key = field("idempotency_key");
      try {
        const answer = await api("POST", "/ui/api/jobs", job);
        say((answer.created ? "submitted job " : "an earlier job has this key: job ") + answer.job.job_id);
        live.dataset.fragment = "/ui/fragments/job/" + encodeURIComponent(answer.job.job_id);
        await refresh();
      } catch (e) {
        say(e.message, true);
      }
    });
  }

  if (page === "jobs") {
    const filter = document.getElementById("status-filter");
    filter.addEventListener("change", function () {
      query = filter.value ? "?status=" + encodeURIComponent(filter.value) : "";
      refresh();
    });
    document.getElementById("reset-stats").addEventListener("click", async function () {
      try {
        await api("POST", "/ui/api/jobs/stats/reset");
        say("counts reset: only jobs created from now on are counted");
        await refresh();
      } catch (e) {
        say(e.message, true);
      }
    });
  }

  window.setInterval(refresh, refreshMs);
})();
