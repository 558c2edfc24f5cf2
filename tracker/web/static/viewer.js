/* vdag viewer pages: small vanilla helpers, no build step. */
"use strict";

const vdag = (() => {
  const POLL_MS = 1000;
  const BLANK = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw==";

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
    }
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Array.isArray(value)) return value.map(fmt).join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  /* {a: {b: 1}, c: 2} -> [["a.b", 1], ["c", 2]] */
  function flatten(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out.push([key, v]);
    }
    return out;
  }

  function kvTable(obj) {
    const rows = flatten(obj).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, fmt(v))));
    return rows.length ? el("table", { class: "kv" }, ...rows) : el("p", { class: "muted" }, "none");
  }

  function setState(node, state) {
    if (!node || !state) return;
    node.textContent = state;
    node.className = `state state-${String(state).toLowerCase()}`;
  }

  /* The current plan (PlanOut of GET /api/v1/jobs/<uid>): video knobs and stage placement. */
  function renderPlan(plan) {
    if (!plan || typeof plan !== "object") return el("p", { class: "muted" }, "no plan yet");
    const box = el("div");
    const when = plan.created_at ? new Date(plan.created_at).toLocaleTimeString() : "";
    box.append(el("p", { class: "plan-head" },
      el("b", {}, `#${plan.id ?? "?"} · ${plan.planner ?? "planner"}`),
      el("span", { class: "muted" }, when ? ` at ${when}` : "")));
    if (plan.reason) box.append(el("p", { class: "muted plan-reason" }, plan.reason));
    if (plan.video_conf) box.append(el("h3", {}, "Video"), kvTable(plan.video_conf));
    const mapping = plan.flow_mapping;
    if (mapping && typeof mapping === "object") {
      const rows = Object.entries(mapping).map(([stage, m]) =>
        el("tr", {}, el("td", {}, stage), el("td", {}, fmt(m.node ?? m.node_ip)),
           el("td", {}, fmt(m.node_role)), el("td", {}, fmt(m.grade ?? m.model_id))));
      box.append(el("h3", {}, "Placement"),
        el("table", { class: "grid compact" },
          el("thead", {}, el("tr", {}, el("th", {}, "stage"), el("th", {}, "node"),
                                el("th", {}, "role"), el("th", {}, "grade"))),
          el("tbody", {}, ...rows)));
    }
    return box;
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}`);
    return resp.json();
  }

  /* Poll the job's JSON every second; never overlap two requests. */
  function pollJob(url, nodes) {
    async function tick() {
      try {
        const body = await getJSON(url);
        const job = body;
        setState(nodes.state, job.state);
        if (nodes.reason) nodes.reason.textContent = job.reason ?? "";
        nodes.plan.replaceChildren(renderPlan(job.plan));
        nodes.stats.replaceChildren(kvTable({ results: job.result_count, ...(job.stats || {}) }));
        nodes.updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (err) {
        nodes.updated.textContent = `update failed: ${err.message}`;
      } finally {
        setTimeout(tick, POLL_MS);
      }
    }
    tick();
  }

  /* Refresh the job list table from the JSON list. */
  function pollJobList(url, tbody, updated, pageBase) {
    async function tick() {
      try {
        const body = await getJSON(url);
        const rows = (body.items || []).map((job) => {
          const href = `${pageBase}/${encodeURIComponent(job.uid)}`;
          const created = job.created_at ? new Date(job.created_at).toLocaleString() : "";
          return el("tr", {},
            el("td", {}, el("a", { href }, el("code", {}, job.uid))),
            el("td", {}, job.name ?? ""),
            el("td", {}, el("span", { class: `state state-${String(job.state).toLowerCase()}`,
                                      title: job.reason ?? "" }, job.state)),
            el("td", {}, job.node ?? ""),
            el("td", { class: "source", title: job.source ?? "" }, job.source ?? ""),
            el("td", {}, created));
        });
        if (rows.length) tbody.replaceChildren(...rows);
        else tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No jobs yet.")));
        updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (err) {
        updated.textContent = `update failed: ${err.message}`;
      } finally {
        setTimeout(tick, 2 * POLL_MS);
      }
    }
    setTimeout(tick, 2 * POLL_MS);
  }

  /* The <img> plays the MJPEG stream by itself; this only handles fps and reconnects. */
  function watchVideo(img, fpsSelect, button, note) {
    const base = img.dataset.src;
    function connect() {
      const fps = fpsSelect.value;
      const params = new URLSearchParams({ t: Date.now() });
      if (fps) params.set("fps", fps);
      img.src = `${base}?${params}`;
      note.textContent = "";
    }
    img.addEventListener("error", () => {
      note.textContent = "stream unavailable; retrying…";
      setTimeout(connect, 3000);
    });
    /* Chromium keeps reading a multipart <img> after the page is left or the src is
       replaced unless the image is pointed elsewhere first: end the stream explicitly. */
    function disconnect() {
      img.removeAttribute("src");
      img.src = BLANK;
    }
    window.addEventListener("pagehide", disconnect);
    fpsSelect.addEventListener("change", () => { disconnect(); connect(); });
    button.addEventListener("click", () => { disconnect(); connect(); });
  }

  return { pollJob, pollJobList, watchVideo };
})();
