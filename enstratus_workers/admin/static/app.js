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
  // the filters of the Jobs and Audit pages: from the address (a bookmark, the "older" link),
  // then from their forms; the fragment checks them (a bad one: 422, shown as the message)
  let query = (page === "jobs" || page === "audit") ? window.location.search : "";

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

  // Fetch the fragment of `element` and swap it in; false if it could not be had.
  async function swap(element, url) {
    const response = await fetch(url, {credentials: "same-origin"});
    if (response.status === 401) { loginAgain(); return false; }
    if (!response.ok) {
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      say("refresh failed: " + detailOf(data, response), true);
      return false;
    }
    element.innerHTML = await response.text();
    return true;
  }

  async function refresh() {
    const url = live && live.dataset.fragment;
    if (!url || busy) return;
    busy = true;
    try {
      if (await swap(live, url + query)) {
        document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      }
      const outcome = document.getElementById("outcome");
      if (outcome && outcome.dataset.done === "yes") live.dataset.fragment = "";  // a finished job stays as it is
    } catch (e) {
      say("refresh failed: " + e.message, true);
    } finally {
      busy = false;
    }
  }

  // Parts that change slowly (the status page's charts) refresh on their own clock.
  document.querySelectorAll(".live-extra[data-fragment]").forEach(function (element) {
    window.setInterval(function () {
      swap(element, element.dataset.fragment).catch(function (e) { say("refresh failed: " + e.message, true); });
    }, Number(element.dataset.everyMs) || 15000);
  });

  // Click on a button that calls the API, say what came of it, and show the change at once.
  async function act(button, method, path, done) {
    button.disabled = true;
    try {
      say(done(await api(method, path)));
      await refresh();
    } catch (e) {
      say(e.message, true);
    } finally {
      button.disabled = false;
    }
  }

  function redriven(answer) {
    if (answer.redriven === undefined) return "job " + answer.job_id + " re-driven: " + answer.status;
    return "re-driven " + answer.redriven.length + " job(s)" +
      (answer.dead_letters_kept ? " (their dead letters stay: " + answer.dead_letters_kept + ")" : "");
  }

  function paused(p) {
    return p.kind + " " + p.name + ": " + (p.paused ? "paused: its jobs wait in the outbox" : "relayed again");
  }

  function pauseCall(verb, kind, name) {
    return "/ui/api/" + (kind === "queue" ? "queues/" : "accounts/") + encodeURIComponent(name) + "/" + verb;
  }

  if (page === "status") {
    // pause and resume: a queue's row, a paused account's row, and the form that pauses an account
    live.addEventListener("click", function (event) {
      const button = event.target.closest("button.pause, button.resume");
      if (!button) return;
      act(button, "POST", pauseCall(button.classList.contains("pause") ? "pause" : "resume",
                                    button.dataset.kind, button.dataset.name), paused);
    });
    document.getElementById("pause-account").addEventListener("submit", function (event) {
      event.preventDefault();
      const name = document.getElementById("account-to-pause").value.trim();
      if (name) act(event.target.querySelector("button"), "POST", pauseCall("pause", "account", name), paused);
    });
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

  // The filter forms: filled from the address, and on a change they become the fragment's query
  // and the address (so the filtered view can be bookmarked).
  function filterForm(form) {
    const params = new URLSearchParams(window.location.search);
    Array.prototype.forEach.call(form.elements, function (field) {
      if (field.name && params.has(field.name)) field.value = params.get(field.name);
    });
    function apply(event) {
      if (event) event.preventDefault();
      const chosen = new URLSearchParams();
      Array.prototype.forEach.call(form.elements, function (field) {
        if (field.name && field.value.trim()) chosen.set(field.name, field.value.trim());
      });
      query = chosen.toString() ? "?" + chosen.toString() : "";
      window.history.replaceState(null, "", window.location.pathname + query);
      say("");
      refresh();
    }
    form.addEventListener("submit", apply);
    form.addEventListener("change", function (event) { if (event.target.tagName === "SELECT") apply(); });
  }

  if (page === "jobs" || page === "audit") {
    filterForm(document.getElementById("filter"));
    if (query) refresh();
  }

  if (page === "dead") {
    live.addEventListener("click", function (event) {
      const one = event.target.closest("button.retry");
      const all = event.target.closest("#retry-all");
      if (one) act(one, "POST", "/ui/api/jobs/" + encodeURIComponent(one.dataset.job) + "/retry", redriven);
      if (all && window.confirm("Re-drive every dead job?")) act(all, "POST", "/ui/api/jobs/dead/retry", redriven);
    });
  }

  if (page === "job") {
    live.addEventListener("click", function (event) {
      const button = event.target.closest("#cancel, #retry");
      if (!button) return;
      const path = "/ui/api/jobs/" + encodeURIComponent(button.dataset.job) + "/" + button.id;
      act(button, "POST", path, button.id === "retry" ? redriven : function (job) {
        return "job " + job.job_id + ": " + job.status;
      });
    });
  }

  if (page === "jobs") {
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
