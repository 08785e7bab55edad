// Berth console. Reads GET api/snapshot, then follows GET events (Server-
// Sent Events over fetch, so the Authorization header can be sent; an
// EventSource cannot set headers and the token must never be in the URL).
//
// Every value from the server reaches the DOM through textContent or an
// attribute set with setAttribute: this file never assigns innerHTML.
"use strict";

(() => {
  const FINISHED_KEEP = 20;
  const TOKEN_KEY = "berth.console.token";

  const state = {
    index: 0,
    proxies: new Map(),
    conns: new Map(),
    endpoints: new Map(),
    moves: new Map(),
    cluster: null,
    derived: { targets: {}, load: {}, connectivity: {} },
  };

  // --- DOM helpers: text only -------------------------------------------

  const $ = (id) => document.getElementById(id);

  // el builds an element; attrs are set with setAttribute (or dataset for
  // data-*), children are nodes or strings (text nodes, never markup).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "style") for (const [p, pv] of Object.entries(v)) e.style.setProperty(p, pv);
      else e.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  const setText = (id, v) => { $(id).textContent = v; };

  function ago(ms) {
    if (!ms) return "-";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + u[i];
  }

  // --- token ---------------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY) || "";

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  let loginWaiter = null;
  function askToken(message) {
    setStream("login");
    setText("login-error", message || "");
    const d = $("login");
    if (!d.open) d.showModal();
    $("token").focus();
    return new Promise((resolve) => { loginWaiter = resolve; });
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").close();
    $("forget-token").hidden = false;
    if (loginWaiter) { const w = loginWaiter; loginWaiter = null; w(); }
  });
  $("login").addEventListener("cancel", (e) => e.preventDefault());
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    location.reload();
  });
  $("forget-token").hidden = !token;

  // --- model ---------------------------------------------------------------

  function applyRegistry(reg) {
    state.index = reg.index;
    state.proxies = new Map(reg.proxies.map((p) => [p.id, p]));
    state.conns = new Map(reg.connections.map((c) => [c.id, c]));
    state.endpoints = new Map(reg.endpoints.map((e) => [e.name, e]));
    state.moves = new Map(reg.moves.map((m) => [m.id, m]));
  }

  const finished = (m) => m.state === "COMPLETED" || m.state === "ABORTED";

  function applyEvents(events) {
    for (const ev of events) {
      const del = ev.op === "delete";
      const put = (map, key, v) => (del ? map.delete(key) : map.set(key, v));
      if (ev.proxy) put(state.proxies, ev.proxy.id, ev.proxy);
      else if (ev.connection) put(state.conns, ev.connection.id, ev.connection);
      else if (ev.endpoint) put(state.endpoints, ev.endpoint.name, ev.endpoint);
      else if (ev.move) put(state.moves, ev.move.id, ev.move);
      state.index = Math.max(state.index, ev.index);
    }
    const done = [...state.moves.values()].filter(finished).sort((a, b) => b.version - a.version);
    for (const m of done.slice(FINISHED_KEEP)) state.moves.delete(m.id);
  }

  // --- rendering -----------------------------------------------------------

  // Renders are batched; a timer, not requestAnimationFrame, so a page in
  // a background tab still keeps up.
  let renderQueued = false;
  function render() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => {
      renderQueued = false;
      renderHeader();
      renderCluster();
      renderProxies();
      renderEndpoints();
      renderMoves();
    }, 30);
  }

  function renderHeader() {
    setText("index", state.index ? String(state.index) : "-");
    document.body.dataset.index = String(state.index);
    setText("served-by", state.cluster ? state.cluster.servedBy : "-");
  }

  function renderCluster() {
    const c = state.cluster;
    if (!c) return;
    const healthy = c.servers.filter((s) => s.healthy).length;
    setText("member-count", `${c.servers.length} servers, ${healthy} healthy`);
    $("member-count").dataset.servers = String(c.servers.length);
    $("member-count").dataset.healthy = String(healthy);
    const item = (k, v) => el("div", {}, el("dt", {}, k), el("dd", {}, v));
    $("cluster-summary").replaceChildren(
      item("Leader", c.leader ? c.leader + (c.leaderAddress ? " (" + c.leaderAddress + ")" : "") : "none"),
      item("Term", String(c.term)),
      item("Commit index", String(c.commitIndex)),
      item("Applied index", String(c.appliedIndex)),
    );
    $("members").replaceChildren(...c.servers.map((s) => el("tr", { "data-server-id": s.id },
      el("td", {}, s.id + (s.id === c.leader ? " \u2605" : "")),
      el("td", {}, s.state),
      el("td", { class: s.healthy ? "ok" : "bad" }, s.healthy ? "healthy" : "unhealthy"),
      el("td", { class: "num" }, String(s.term)),
      el("td", { class: "num" }, String(s.commitIndex)),
      el("td", { class: "num" }, String(s.appliedIndex)),
      el("td", { class: "num" }, s.state === "Leader" ? "-" : (s.lastContactMs > 0 ? (s.lastContactMs / 1000).toFixed(1) + " s ago" : "-")),
      el("td", {}, s.suffrage.toLowerCase()),
      el("td", {}, s.grpc),
      el("td", { class: "wrap error" }, s.error || ""),
    )));
  }

  function connectionCounts() {
    const n = new Map();
    for (const c of state.conns.values()) n.set(c.proxy, (n.get(c.proxy) || 0) + 1);
    return n;
  }

  function renderProxies() {
    const counts = connectionCounts();
    const proxies = [...state.proxies.values()].sort((a, b) =>
      a.region.localeCompare(b.region) || a.zone.localeCompare(b.zone) || a.id.localeCompare(b.id));
    const byStatus = {};
    for (const p of proxies) byStatus[p.status] = (byStatus[p.status] || 0) + 1;
    setText("proxy-count", `${proxies.length} proxies, ${state.conns.size} connections` +
      Object.keys(byStatus).sort().map((s) => `, ${byStatus[s]} ${s.toLowerCase()}`).join(""));
    $("proxy-count").dataset.proxies = String(proxies.length);
    $("proxy-count").dataset.connections = String(state.conns.size);

    const targets = state.derived.targets || {};
    let scale = 1;
    for (const p of proxies) scale = Math.max(scale, counts.get(p.id) || 0, targets[p.id] || 0);

    const regions = new Map();
    for (const p of proxies) {
      if (!regions.has(p.region)) regions.set(p.region, new Map());
      const zones = regions.get(p.region);
      if (!zones.has(p.zone)) zones.set(p.zone, []);
      zones.get(p.zone).push(p);
    }
    const groups = [];
    for (const [region, zones] of regions) {
      const zoneEls = [];
      for (const [zone, ps] of zones) {
        zoneEls.push(el("div", { class: "zone", "data-zone": zone },
          el("h4", {}, "zone " + (zone || "(none)")),
          ps.map((p) => proxyRow(p, counts.get(p.id) || 0, targets[p.id], scale))));
      }
      groups.push(el("div", { class: "region", "data-region": region }, el("h3", {}, "region " + (region || "(none)")), zoneEls));
    }
    $("proxy-groups").replaceChildren(...groups);
  }

  function proxyRow(p, n, target, scale) {
    const load = (state.derived.load || {})[p.id];
    const pct = (v) => (100 * v / scale).toFixed(2) + "%";
    const bar = el("div", { class: "bar", title: target === undefined ? "no balance target (not schedulable)" : "target " + target.toFixed(1) },
      el("div", { class: "fill s-" + p.status, style: { width: pct(n) } }),
      target === undefined ? null : el("div", { class: "target", style: { left: pct(target) } }));
    const labels = Object.entries(p.labels || {}).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => k + "=" + v).join("  ");
    return el("div", {
      class: "proxy", "data-proxy-id": p.id, "data-status": p.status, "data-connections": n,
      "data-target": target === undefined ? "" : target.toFixed(2),
    },
    el("span", { class: "name", title: p.id }, p.id),
    el("span", { class: "badge s-" + p.status }, (p.status || "unknown").toLowerCase()),
    bar,
    el("span", { class: "num" }, `${n} / ${target === undefined ? "-" : target.toFixed(1)}`),
    el("span", { class: "load" }, load ? `${load.activeStreams} streams, ${load.cpuMillicores}m CPU, ${bytes(load.memoryBytes)}` : "no load sample"),
    labels ? el("span", { class: "labels" }, labels) : null);
  }

  function renderEndpoints() {
    const eps = [...state.endpoints.values()].sort((a, b) => a.name.localeCompare(b.name));
    setText("endpoint-count", String(eps.length));
    $("endpoint-count").dataset.endpoints = String(eps.length);
    const conn = state.derived.connectivity || {};
    $("endpoint-rows").replaceChildren(...eps.map((e) => el("tr", { "data-endpoint": e.name },
      el("td", {}, e.name),
      el("td", { class: "num" }, String(e.connections)),
      el("td", { class: "wrap" }, e.proxies.map((p) => {
        const st = (conn[e.name] || {})[p];
        return el("span", { class: "chip c-" + (st || "none"), title: st ? "ring-hash aggregate on " + p : "no state reported" }, p + (st ? ": " + st : ""));
      })),
    )));
  }

  function moveRow(m, when) {
    return el("tr", { "data-move-id": m.id, "data-state": m.state },
      el("td", {}, m.id),
      el("td", {}, m.connection),
      el("td", {}, m.from),
      el("td", {}, m.to),
      el("td", {}, m.state.toLowerCase()),
      el("td", { class: "wrap" }, m.reason + (m.abortReason ? " (aborted: " + m.abortReason + ")" : "")),
      el("td", { class: "num" }, when));
  }

  function renderMoves() {
    const all = [...state.moves.values()];
    const open = all.filter((m) => !finished(m)).sort((a, b) => a.createdMs - b.createdMs);
    const done = all.filter(finished).sort((a, b) => b.version - a.version).slice(0, FINISHED_KEEP);
    setText("move-count", String(open.length));
    $("move-count").dataset.moves = String(open.length);
    $("moves-open").replaceChildren(...open.map((m) => moveRow(m, ago(m.createdMs))));
    $("moves-done").replaceChildren(...done.map((m) => moveRow(m, ago(m.createdMs) + " ago")));
  }
  setInterval(() => { if (state.moves.size) renderMoves(); }, 1000);

  // --- transport -------------------------------------------------------------

  function setStream(s) {
    document.body.dataset.stream = s;
    setText("stream-state", s);
  }

  function banner(msg) {
    const b = $("banner");
    b.hidden = !msg;
    b.textContent = msg || "";
  }

  class HTTPError extends Error {
    constructor(status, body) {
      super((body && body.error) || "HTTP " + status);
      this.status = status;
    }
  }

  async function check(resp) {
    if (resp.ok) return resp;
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    throw new HTTPError(resp.status, body);
  }

  async function loadSnapshot() {
    const resp = await check(await fetch("api/snapshot", { headers: headers(), cache: "no-store" }));
    const snap = await resp.json();
    applyRegistry(snap);
    state.cluster = snap.cluster;
    state.derived = snap.derived;
    render();
  }

  function dispatch(event, id, data) {
    const v = JSON.parse(data);
    switch (event) {
      case "snapshot": applyRegistry(v); break;
      case "events": applyEvents(v.events); break;
      case "cluster": state.cluster = v; break;
      case "derived": state.derived = v; break;
      case "reset": break; // a snapshot or the gap follows
      case "error": throw new Error("stream ended: " + v.error);
      default: return;
    }
    if (id) state.index = Math.max(state.index, Number(id));
    render();
  }

  // stream reads one event stream until it ends. It resumes after the last
  // index the page holds (Last-Event-ID).
  async function stream() {
    document.body.dataset.resumedFrom = String(state.index);
    const resp = await check(await fetch("events", {
      headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(state.index) }),
      cache: "no-store",
    }));
    setStream("live");
    banner("");
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = "message", id = "", data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "id") id = val;
          else if (field === "data") data.push(val);
        }
        if (data.length) dispatch(event, id, data.join("\n"));
      }
    }
  }

  async function main() {
    let failures = 0;
    let loaded = false;
    for (;;) {
      try {
        if (!loaded) { await loadSnapshot(); loaded = true; }
        await stream();
        failures = 0;
        setStream("reconnecting");
      } catch (err) {
        if (err instanceof HTTPError && err.status === 401) {
          await askToken(token ? "The control plane refused this token: " + err.message : "");
          continue;
        }
        failures++;
        setStream(loaded ? "reconnecting" : "error");
        banner(err.message + (loaded ? " (reconnecting; the page resumes from index " + state.index + ")" : " (retrying)"));
      }
      await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(failures, 5))));
    }
  }

  main();
})();
