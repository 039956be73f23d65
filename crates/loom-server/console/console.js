// The Loom console: start actors and workflows, watch their runs live, cancel them, re-attach
// to detached runs. It speaks to this server through loom-client (served at /loom-client.js).
import { Loom, LoomError } from "/loom-client.js";

const $ = (id) => document.getElementById(id);
let loom = new Loom({ baseUrl: location.origin, apiKey: localStorage.getItem("loom-key") ?? undefined });
let current = null; // the run shown: { id, stream, stop }, where stop ends its stream
const workflows = new Map();

function status(text) {
  $("status").textContent = text;
}

async function load() {
  try {
    const [actors, flows] = await Promise.all([loom.actors(), loom.workflows()]);
    $("key-form").hidden = !loom.apiKey;
    const select = $("target");
    select.replaceChildren();
    for (const a of actors) select.append(new Option(a.name, `actor:${a.name}`));
    for (const w of flows) {
      workflows.set(w.name, w);
      select.append(new Option(`workflow: ${w.name}`, `workflow:${w.name}`));
    }
    chosen();
    status("");
    await listRuns();
    // After a reload, the run this tab showed: it went on (runs started here are detached).
    const last = sessionStorage.getItem("loom-run");
    if (last && !current) {
      if (await loom.runs.get(last).catch(() => undefined)) follow(last);
      else sessionStorage.removeItem("loom-run");
    }
  } catch (error) {
    if (error instanceof LoomError && error.status === 401) {
      $("key-form").hidden = false;
      $("key").focus();
      // A key the server refused is not kept for the next visit.
      if (loom.apiKey) localStorage.removeItem("loom-key");
      status(loom.apiKey ? "The server refused that API key." : "This server needs an API key.");
    } else {
      status(`Cannot reach the server: ${error.message}`);
    }
  }
}

/** The form follows the chosen target: a prompt for chat-agent, JSON otherwise. */
function chosen() {
  const [kind, name] = $("target").value.split(/:(.*)/);
  const chat = kind === "actor" && name === "chat-agent";
  $("input-label").textContent = chat ? "Prompt" : "Input (JSON)";
  $("input").value = chat ? "" : "{}";
  $("input").placeholder = chat ? "Ask something…" : "{}";
  const flow = kind === "workflow" ? workflows.get(name) : null;
  $("target-help").textContent = flow ? `${flow.description ?? ""} Steps: ${(flow.steps ?? []).join(" → ")}` : "";
}

async function listRuns() {
  const runs = await loom.runs.list();
  $("runs").replaceChildren(
    ...runs.slice(0, 15).map((run) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = `${run.actor ?? run.workflow} · ${run.status}`;
      const join = document.createElement("button");
      join.type = "button";
      join.textContent = "Open";
      join.onclick = () => follow(run.run_id);
      li.append(name, join);
      return li;
    }),
  );
}

function reset(id) {
  $("run-id").textContent = id;
  state("running");
  clearOutput();
  $("result").hidden = true;
}

function state(text) {
  $("run-state").textContent = text;
  $("run-state").className = `badge ${text}`;
}

/**
 * A start the page or the server refused: the panel says so, rather than keep showing the run
 * before as if it were this one's.
 */
function refused(message) {
  current?.stop.abort();
  current = null;
  sessionStorage.removeItem("loom-run");
  reset("–");
  state("refused");
  $("cancel").disabled = true;
  $("result").hidden = false;
  $("result").textContent = message;
  status(message);
}

/** Takes back every step, bar and lane shown (a new attempt of the run supersedes them). */
function clearOutput() {
  for (const box of ["steps", "bars", "lanes"]) $(box).replaceChildren();
}

/** The lane of a speaker (a team member, a workflow step, or the run itself). */
function lane(name) {
  const key = `lane-${name}`;
  let el = document.getElementById(key);
  if (!el) {
    el = document.createElement("div");
    el.className = "lane";
    el.id = key;
    const title = document.createElement("h3");
    title.textContent = name === "" ? "output" : name;
    const text = document.createElement("div");
    text.className = "text";
    // Scrolled back from the end, the lane stays put; at its end, it follows the newest text.
    text.onscroll = () => {
      text.dataset.held = text.scrollTop + text.clientHeight < text.scrollHeight - 8 ? "1" : "";
    };
    el.append(title, text);
    $("lanes").append(el);
  }
  return el.querySelector(".text");
}

/** Lanes that grew since the last frame was drawn. */
const grown = new Set();

/**
 * Appends `token` to `text` (one text node, added to in place), and once a frame scrolls the
 * lanes that grew and were at their end to it: a replay of many tokens lays the page out once
 * a frame, not once a token.
 */
function append(text, token) {
  if (!text.firstChild) text.append(document.createTextNode(""));
  text.firstChild.appendData(token);
  if (grown.size === 0) {
    requestAnimationFrame(() => {
      for (const lane of grown) if (!lane.dataset.held) lane.scrollTop = lane.scrollHeight;
      grown.clear();
    });
  }
  grown.add(text);
}

function bar(name, progress) {
  const key = `bar-${name}`;
  let el = document.getElementById(key);
  if (!el) {
    el = document.createElement("div");
    el.className = "bar";
    el.id = key;
    el.append(document.createElement("span"), document.createElement("progress"));
    $("bars").append(el);
  }
  const [label, meter] = el.children;
  label.textContent = `${name ? `${name}: ` : ""}${progress.message ?? ""} (${progress.current}${progress.total ? `/${progress.total}` : ""})`;
  meter.max = progress.total ?? progress.current;
  meter.value = progress.current;
}

function step(name, state, started, note = "") {
  let li = document.getElementById(`step-${name}`);
  if (!li) {
    li = document.createElement("li");
    li.id = `step-${name}`;
    li.append(document.createElement("span"), document.createElement("span"));
    $("steps").append(li);
  }
  li.className = state;
  li.firstChild.textContent = name;
  li.lastChild.textContent = started ? `${((performance.now() - started) / 1000).toFixed(1)} s` : note && "retrying";
  li.title = note;
}

/**
 * Shows run `id`'s chunks until its terminal chunk. Following another run (or the same one again)
 * ends the stream shown before; the run itself goes on. `live`: the run was just started here,
 * so its chunks arrive as they happen and steps can be timed; a re-opened run's replay comes
 * in a burst, and chunks carry no times, so its steps show their outcome only.
 */
async function follow(id, { live = false } = {}) {
  current?.stop.abort();
  const stop = new AbortController();
  const stream = loom.runs.stream(id, { signal: stop.signal });
  current = { id, stream, stop };
  sessionStorage.setItem("loom-run", id);
  reset(id);
  $("cancel").disabled = false;
  const started = new Map();
  // What each workflow step has shown (its lanes' and bars' names), which its retry takes back.
  const shown = new Map();
  const showing = (chunk, who) => {
    if (chunk.step === undefined) return;
    if (!shown.has(chunk.step)) shown.set(chunk.step, new Set());
    shown.get(chunk.step).add(who);
  };
  try {
    for await (const chunk of stream) {
      if (current?.stream !== stream) return;
      const who = chunk.actor ?? chunk.step ?? "";
      if (chunk.type === "start" && chunk.attempt > 1) {
        // A re-run of the whole run (its worker was lost): what the attempt before showed is
        // superseded (DESIGN.md §3), not to be glued to this one's output.
        clearOutput();
        started.clear();
        shown.clear();
        status(`Attempt ${chunk.attempt}: the output of the attempt before was discarded.`);
      } else if (chunk.event === "action-start") {
        if (live) started.set(chunk.step, performance.now());
        step(chunk.step, "running");
      } else if (chunk.event === "action-retry") {
        // Everything the step showed since its start (or last retry) is superseded.
        for (const name of shown.get(chunk.step) ?? []) {
          document.getElementById(`lane-${name}`)?.remove();
          document.getElementById(`bar-${name}`)?.remove();
        }
        shown.delete(chunk.step);
        step(chunk.step, "running", undefined, chunk.progress?.message ?? "retried");
      } else if (chunk.event === "action-complete" || chunk.event === "action-failed") {
        step(chunk.step, chunk.event === "action-complete" ? "done" : "failed", started.get(chunk.step));
      } else if (chunk.type === "data" && typeof chunk.data?.token === "string") {
        append(lane(who), chunk.data.token);
        showing(chunk, who);
      } else if (chunk.type === "progress") {
        bar(who, chunk.progress);
        showing(chunk, who);
      } else if (chunk.type === "complete" || chunk.type === "error") {
        state(chunk.type === "complete" ? "complete" : chunk.error.code === "cancelled" ? "cancelled" : "error");
        // A step the run's end cut short (cancelled, timed out) has no `action-failed` of its own.
        if (chunk.type === "error") for (const li of $("steps").querySelectorAll("li.running")) li.className = "failed";
        $("result").hidden = false;
        $("result").textContent = JSON.stringify(chunk.type === "complete" ? chunk.data : chunk.error, null, 2);
      }
    }
  } catch (error) {
    if (!stop.signal.aborted) {
      const why = error instanceof LoomError ? `${error.code}: ${error.message}` : error.message;
      // The page lost the stream, or the log no longer holds its start (410): a run that is
      // over still says how it ended; one that goes on is shown as lost, not as running.
      const info = await loom.runs.get(id).catch(() => undefined);
      if (current?.stream !== stream) return;
      if (info && info.status !== "running") {
        state(info.status);
        status(`${why} — the run ended: ${info.status}${info.error_code ? ` (${info.error_code})` : ""}`);
      } else {
        state("disconnected");
        status(why);
      }
    }
  } finally {
    if (current?.stream === stream) $("cancel").disabled = true;
    listRuns().catch(() => {});
  }
}

$("target").onchange = chosen;

$("start-form").onsubmit = async (event) => {
  event.preventDefault();
  const [kind, name] = $("target").value.split(/:(.*)/);
  let input;
  if ($("input-label").textContent === "Prompt") {
    input = { prompt: $("input").value };
  } else {
    try {
      input = JSON.parse($("input").value || "{}");
    } catch (error) {
      refused(`The input is not JSON: ${error.message}`);
      return;
    }
  }
  try {
    // A detached run: it survives this page, and any reader can re-attach to it.
    const { run_id } = await loom.runs.create({ [kind]: name, input });
    status("");
    follow(run_id, { live: true });
    listRuns().catch(() => {});
  } catch (error) {
    refused(error instanceof LoomError ? `${error.code}: ${error.message}` : error.message);
  }
};

$("cancel").onclick = async () => {
  if (current) await loom.runs.cancel(current.id).catch((e) => status(e.message));
};

$("key-form").onsubmit = (event) => {
  event.preventDefault();
  const key = $("key").value;
  localStorage.setItem("loom-key", key);
  loom = new Loom({ baseUrl: location.origin, apiKey: key });
  load();
};

load();
