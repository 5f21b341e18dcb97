// fleetgate's live page: polls /ui/state and redraws. Hand-written, no build step, no
// dependencies; everything goes into the page as text (never as HTML).
"use strict";

const POLL_MS = 2000;

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children || []) if (c) node.append(c);
  return node;
}

function num(v, digits) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  return v.toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function pair(p) {
  return p ? `${num(p.p50, 0)} / ${num(p.p95, 0)} ms` : "–";
}

function bar(parts, title) {
  const b = el("div", { className: "bar", title: title || "" });
  for (const [cls, fraction] of parts) {
    const s = el("span", { className: cls });
    s.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
    b.append(s);
  }
  return b;
}

function slug(label) {
  return label.toLowerCase().replace(/[^a-z0-9]+/g, "-");
}

function row(dl, label, value, field) {
  dl.append(el("dt", { text: label }));
  const dd = el("dd", field ? { "data-field": field } : {});
  if (value instanceof Node) dd.append(value); else dd.textContent = value;
  dl.append(dd);
}

function deployment(d) {
  const box = el("div", { className: `dep ${d.state}`, "data-deployment": d.name, "data-state": d.state });
  box.append(el("div", { className: "title" }, [
    el("span", { className: "name", text: d.name }),
    el("span", { className: `badge ${d.state}`, text: d.state, "data-field": "state" }),
    el("span", { className: "dim", text: d.served_model }),
  ]));
  const dl = el("dl");
  row(dl, "model", d.model || "–");
  row(dl, "context", num(d.max_model_len, 0));
  const slots = el("div", {}, [
    bar([["seg-used", d.slots ? d.slots_in_use / d.slots : 0]]),
    el("span", { className: "legend", text: `${d.slots_in_use} of ${d.slots} slots in use` }),
  ]);
  row(dl, "slots", slots, "slots");
  row(dl, "TTFT p50/p95", pair(d.ttft_ms), "ttft");
  row(dl, "end-to-end p50/p95", pair(d.e2e_ms), "e2e");
  const be = d.backend;
  if (be && !be.error) {
    const kv = be.kv_usage === null || be.kv_usage === undefined ? null : be.kv_usage;
    row(dl, "KV cache", el("div", {}, [
      bar([["seg-kv-cache", kv || 0]]),
      el("span", { className: "legend", text: kv === null ? "not reported" : `${num(kv * 100, 0)}% used` }),
    ]), "kv");
    row(dl, "running / waiting", `${num(be.running, 0)} / ${num(be.waiting, 0)}`);
    row(dl, "preemptions", num(be.preemptions, 0), "preemptions");
    row(dl, "tokens/s in / out",
      `${num(be.prompt_tokens_per_s)} / ${num(be.generation_tokens_per_s)}`, "tokens");
  } else {
    row(dl, "backend", be ? be.error : "not scraped yet", "backend");
  }
  const mem = d.gpu_memory;
  if (mem) {
    const total = mem.total_gib || 1;
    const parts = mem.segments.map((s) => [`seg-${slug(s.label)}`, s.gib / total]);
    const legend = mem.segments.map((s) => `${s.label} ${num(s.gib, 2)}`).join(" · ");
    row(dl, "GPU memory", el("div", {}, [
      bar(parts, `${mem.gpu}: ${legend} GiB`),
      el("span", { className: "legend", text: `${mem.gpu} ${num(total, 1)} GiB (plan): ${legend}` }),
    ]), "gpu");
  }
  box.append(dl);
  return box;
}

function draw(s) {
  const byName = Object.fromEntries(s.deployments.map((d) => [d.name, d]));
  const hosts = document.getElementById("hosts");
  hosts.replaceChildren(...s.hosts.map((h) => el("div", { className: "host", "data-host": h.name }, [
    el("h3", { text: h.name }),
    ...h.deployments.map((n) => deployment(byName[n])),
  ])));
  document.getElementById("window").textContent =
    `latency and rates over the last ${num(s.gateway.window_s / 60, 1)} min`;
  document.querySelector("#lanes tbody").replaceChildren(...s.lanes.map((l) =>
    el("tr", { "data-lane": l.name }, [
      el("td", { text: l.name }),
      el("td", { text: l.route === l.name ? "route" : `profile of ${l.route}` }),
      el("td", { text: `${l.queued} / ${l.queue_depth}`, "data-field": "queue" }),
      el("td", { text: num(l.requests, 0), "data-field": "requests" }),
      el("td", { text: num(l.refused, 0), "data-field": "refused" }),
      el("td", { text: num(l.tokens_in_per_s) }),
      el("td", { text: num(l.tokens_out_per_s) }),
      el("td", { text: pair(l.queue_wait_ms) }),
    ])));
  document.getElementById("day").textContent = `today (${s.day})`;
  document.querySelector("#keys tbody").replaceChildren(...s.keys.map((k) =>
    el("tr", { "data-key": k.name }, [
      el("td", { text: k.name }),
      el("td", { text: num(k.requests, 0), "data-field": "requests" }),
      el("td", { text: num(k.tokens_in, 0), "data-field": "tokens_in" }),
      el("td", { text: num(k.tokens_out, 0), "data-field": "tokens_out" }),
      el("td", { text: num(k.refusals, 0), "data-field": "refusals" }),
    ])));
  const up = s.deployments.filter((d) => d.state === "up").length;
  const status = document.getElementById("status");
  status.className = "status";
  status.textContent = `${up} of ${s.deployments.length} deployments up · ` +
    `updated ${new Date(s.gateway.now * 1000).toLocaleTimeString()}`;
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/ui/state", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.reload(); return; }
    if (!resp.ok) throw new Error(`the gateway answered ${resp.status}`);
    draw(await resp.json());
  } catch (err) {
    status.className = "status stale";
    status.textContent = `cannot reach the gateway (${err.message}); retrying`;
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", poll);
