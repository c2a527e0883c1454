// merge-explorer's offline explorer: the choice of `pick` (explorer/core/decision.py), made in the page.
// The data are embedded by explorer/html_explorer.py; nothing is fetched, nothing is sent.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const T = D.tasks.length;
  const F = D.front;
  const CAND = F.trusted.some(Boolean) ? F.trusted.map((t, k) => (t ? k : -1)).filter((k) => k >= 0)
                                       : F.trusted.map((_, k) => k);
  const timings = [];
  const problems = [];

  // --- the decision, as explorer.core.decision computes it ----------------------------------
  // numpy adds along an axis by pairwise summation (8 partial sums from 8 terms on): the same
  // order here, so that the scores, and therefore ties, are bit for bit those of `pick`.
  function npSum(a, lo, n) {
    if (n < 8) {
      let res = 0.0;
      for (let i = 0; i < n; i++) res += a[lo + i];
      return res;
    }
    if (n <= 128) {
      const r = a.slice(lo, lo + 8);
      let i = 8;
      for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[lo + i + j];
      let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
      for (; i < n; i++) res += a[lo + i];
      return res;
    }
    let n2 = Math.floor(n / 2);
    n2 -= n2 % 8;
    return npSum(a, lo, n2) + npSum(a, lo + n2, n - n2);
  }
  const sum = (a) => npSum(a, 0, a.length);

  // weights: importance per task (finite, >= 0, not all 0); floors: per-task bound in metric units or null.
  function decide(weights, floors) {
    const w = weights.map((x) => Math.max(x, 1e-6));
    const wsum = sum(w);
    const wn = w.map((x) => x / wsum);
    const score = new Float64Array(CAND.length);
    const good = [];
    for (let r = 0; r < CAND.length; r++) {
      const p = F.predicted[CAND[r]];
      const g = p.map((v, k) => v * D.senses[k]);
      good.push(g);
      const terms = g.map((v, k) => wn[k] * ((D.ideal[k] - v) / Math.max(D.ideal[k] - D.nadir[k], 1e-12)));
      let mx = -Infinity;
      for (const t of terms) if (t > mx) mx = t;
      score[r] = mx + D.rho * sum(terms);
    }
    const miss = good.map((g) => g.map((v, k) => (floors[k] === null ? 0.0 : Math.max(floors[k] * D.senses[k] - v, 0.0))));
    const argmin = (rows) => {
      let best = -1;
      for (const r of rows) if (best < 0 || score[r] < score[best]) best = r;
      return best;
    };
    const all = CAND.map((_, r) => r);
    const feasibleRows = all.filter((r) => miss[r].every((m) => m <= 1e-12));
    let pick, feasible;
    if (feasibleRows.length) {
      pick = argmin(feasibleRows);
      feasible = true;
    } else {
      const span = D.tasks.map((_, k) => {
        let lo = Infinity, hi = -Infinity;
        for (const g of good) { if (g[k] < lo) lo = g[k]; if (g[k] > hi) hi = g[k]; }
        return Math.max(hi - lo, 1e-12);
      });
      const total = miss.map((m) => sum(m.map((v, k) => v / span[k])));
      let least = Infinity;
      for (const t of total) if (t < least) least = t;
      pick = argmin(all.filter((r) => total[r] <= least + 1e-12));
      feasible = false;
    }
    const k = CAND[pick];
    return { position: k, index: F.index[k], coefficients: F.coefficients[k], predicted: F.predicted[k],
             std: F.std[k], trusted: F.trusted[k], feasible: feasible, shortfall: miss[pick] };
  }

  // --- formatting: percent for accuracies, the ± in the same unit, never a Python literal ----
  const finite = (v) => typeof v === "number" && isFinite(v);
  function value(k, v, digits) {
    if (!finite(v)) return "—";
    return D.percent[k] ? (100 * v).toFixed(digits === undefined ? 1 : digits) + " %" : v.toPrecision(4);
  }
  function plusMinus(k, v, s) {
    if (!finite(v)) return "—";
    if (D.percent[k]) return (100 * v).toFixed(1) + " ± " + (finite(s) ? (100 * s).toFixed(1) : "?") + " %";
    return v.toPrecision(4) + " ± " + (finite(s) ? s.toPrecision(2) : "?");
  }
  const unitOf = (k) => (D.percent[k] ? " (%)" : "");
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  function refsByKind(kind) { return D.references.filter((m) => m.kind === kind); }
  const base = refsByKind("base")[0];
  const ta = refsByKind("task_arithmetic")[0];
  const experts = (() => {
    const out = new Array(T).fill(null);
    for (const m of refsByKind("expert")) {
      const k = m.coefficients.findIndex((c) => Math.abs(c - 1) < 1e-9);
      if (k >= 0) out[k] = m.metrics[k];
    }
    return out.every((v) => v !== null) ? out : null;
  })();

  function versus(k, v, ref, name, first) {
    const scale = D.percent[k] ? 100 : 1;
    const d = scale * (v - ref);
    if (!D.percent[k]) return Math.abs(d).toPrecision(3) + (d * D.senses[k] >= 0 ? " better" : " worse") + " than " + name;
    if (Math.abs(d) < 0.05) return "level with " + name;
    const unit = first ? " points" : "";
    return d > 0 ? "+" + d.toFixed(1) + unit + " over " + name : (-d).toFixed(1) + unit + " below " + name;
  }
  function glance(k, v, s) {
    const parts = [];
    if (base) parts.push(versus(k, v, base.metrics[k], "the base", parts.length === 0));
    if (experts) {
      parts.push(versus(k, v, experts[k], "the expert", parts.length === 0));
      if (base) {
        const gain = (experts[k] - base.metrics[k]) * D.senses[k];
        if (!(gain > 1e-12)) parts.push("the expert does not beat the base here");
        else {
          const share = ((v - base.metrics[k]) * D.senses[k]) / gain;
          parts.push(share <= 0 ? "keeps none of the expert's gain" : "keeps " + (100 * share).toFixed(0) + " % of the expert's gain");
        }
      }
    }
    let head = parts.join(", ");
    if (ta) { const t = versus(k, v, ta.metrics[k], "task arithmetic", parts.length === 0); head = head ? head + "; " + t : t; }
    return D.tasks[k] + ": " + plusMinus(k, v, s) + " (predicted)" + (head ? " — " + head : "");
  }

  function notVouchedReason(d) {
    if (d.trusted) return null;
    const std = d.std.map((s) => (finite(s) ? s : Infinity));
    if (std.every((s, k) => s <= D.trust_std[k])) return "not vouched for: farther from the measured points than the surrogates' left-out errors cover";
    let k = 0, worst = -Infinity;
    std.forEach((s, j) => { const r = s / Math.max(D.trust_std[j], 1e-300); if (r > worst) { worst = r; k = j; } });
    const shown = finite(std[k]) ? plusMinus(k, 0, std[k]).replace(/^[0-9.]+ ± /, "") : "unbounded";
    return "not vouched for: std " + shown + " on task " + D.tasks[k] + " (vouched for up to " +
      plusMinus(k, 0, D.trust_std[k]).replace(/^[0-9.]+ ± /, "") + ")";
  }

  // --- sliders and the link state -------------------------------------------------------------
  const weightInputs = [], minInputs = [], weightLabels = [], minLabels = [];
  function offValue(k) { return D.senses[k] > 0 ? D.sliders[k].lo : D.sliders[k].hi; }
  function buildSliders() {
    const box = document.getElementById("sliders");
    D.tasks.forEach((t, k) => {
      const s = D.sliders[k];
      const div = document.createElement("div");
      div.className = "task";
      const bound = D.senses[k] > 0 ? "Minimum" : "Maximum";
      div.innerHTML =
        '<div class="name">' + esc(t) + ' <span class="meta">' + esc(D.metrics[t] || "") + "</span></div>" +
        '<label>Importance <span class="value"></span></label>' +
        '<input type="range" min="0" max="10" step="0.1" value="1" aria-label="Importance of ' + esc(t) + '">' +
        "<label>" + bound + unitOf(k) + ' <span class="value"></span></label>' +
        '<input type="range" min="' + s.lo + '" max="' + s.hi + '" step="' + s.step + '" value="' + offValue(k) +
        '" aria-label="' + bound + " " + esc(t) + '">';
      box.appendChild(div);
      const inputs = div.querySelectorAll("input"), labels = div.querySelectorAll("span.value");
      weightInputs.push(inputs[0]); minInputs.push(inputs[1]);
      weightLabels.push(labels[0]); minLabels.push(labels[1]);
      inputs[0].addEventListener("input", update);
      inputs[1].addEventListener("input", update);
    });
  }
  function floorsFromSliders() {
    return minInputs.map((input, k) => {
      const v = parseFloat(input.value);
      return Math.abs(v - offValue(k)) > D.sliders[k].step / 2 ? v / D.sliders[k].scale : null;
    });
  }
  const short = (v) => String(Number(v.toPrecision(4)));
  function writeHash(weights, floors) {
    const w = D.tasks.map((t, k) => encodeURIComponent(t) + ":" + short(weights[k])).join(",");
    const m = D.tasks.map((t, k) => (floors[k] === null ? null : encodeURIComponent(t) + ":" + String(floors[k])))
      .filter((x) => x !== null).join(",");
    const hash = "#weights=" + w + (m ? "&min=" + m : "");
    if (location.hash !== hash) history.replaceState(null, "", hash);
    document.getElementById("link").innerHTML = 'Link to this choice: <code class="hash">' + esc(hash) + "</code>";
  }
  function applyPreferences(weights, minimums) {
    D.tasks.forEach((t, k) => {
      if (t in weights) weightInputs[k].value = weights[t];
      if (t in minimums) {
        const s = D.sliders[k];
        minInputs[k].value = Math.min(Math.max(minimums[t] * s.scale, s.lo), s.hi);
      }
    });
  }
  function readHash() {
    const text = location.hash.replace(/^#/, "");
    if (!text) return false;
    const out = { weights: {}, minimums: {} };
    for (const part of text.split("&")) {
      const [key, val] = [part.slice(0, part.indexOf("=")), part.slice(part.indexOf("=") + 1)];
      const name = key === "w" ? "weights" : key;
      if (name !== "weights" && name !== "min") { if (part) problems.push("ignored '" + part.slice(0, 40) + "' from the link: unknown key"); continue; }
      for (const item of val.split(",")) {
        const i = item.lastIndexOf(":");
        let task;
        try { task = decodeURIComponent(item.slice(0, i)); } catch (e) { task = null; }
        const x = Number(item.slice(i + 1));
        if (i < 0 || !D.tasks.includes(task)) { problems.push("ignored " + key + "=" + item.slice(0, 40) + " from the link: no such task (tasks are " + D.tasks.join(", ") + ")"); continue; }
        if (item.slice(i + 1) === "" || !isFinite(x)) { problems.push("ignored " + key + "=" + item.slice(0, 40) + " from the link: not a finite number"); continue; }
        const k = D.tasks.indexOf(task);
        if (name === "weights") {
          if (x < 0 || x > 10) problems.push("ignored " + key + "=" + item.slice(0, 40) + " from the link: an importance lies in [0, 10]");
          else out.weights[task] = x;
        } else {
          const s = D.sliders[k];
          if (x * s.scale < s.lo || x * s.scale > s.hi) problems.push("ignored min=" + item.slice(0, 40) + " from the link: outside the front's range for " + task);
          else out.minimums[task] = x;
        }
      }
    }
    applyPreferences(out.weights, out.minimums);
    return true;
  }

  // --- the front -------------------------------------------------------------------------------
  let pair = [0, Math.min(1, T - 1)];
  let chosenTrace = -1;
  const scaleOf = (k) => (D.percent[k] ? 100 : 1);
  const col = (rows, k) => rows.map((r) => (finite(r[k]) ? r[k] * scaleOf(k) : null));
  function hoverFor(i, j) {
    const f = (k, ax) => D.tasks[k] + " = %{" + ax + ":.2f}" + (D.percent[k] ? " %" : "");
    return f(i, "x") + "<br>" + f(j, "y");
  }
  function coefText(c) { return "c = [" + c.map((v) => v.toFixed(3)).join(", ") + "]"; }
  function frontTraces(i, j, d) {
    const st = D.style, hover = hoverFor(i, j), traces = [];
    const rows = (keep) => F.predicted.filter((_, k) => keep(k));
    const coefs = (keep) => F.coefficients.filter((_, k) => keep(k)).map(coefText);
    const trusted = (k) => F.trusted[k], untrusted = (k) => !F.trusted[k];
    const proj = T > 2 ? "surrogate front, projected (predicted)" : st.front[2];
    traces.push({ type: "scatter", mode: "markers", name: proj, x: col(rows(trusted), i), y: col(rows(trusted), j),
      text: coefs(trusted), marker: { color: st.front[0], size: 5, opacity: T > 2 ? 0.3 : 0.7 },
      hovertemplate: hover + "<br>%{text}<extra>front</extra>" });
    if (F.trusted.some((t) => !t)) {
      traces.push({ type: "scatter", mode: "markers", name: st.untrusted[2], x: col(rows(untrusted), i), y: col(rows(untrusted), j),
        text: coefs(untrusted), marker: { color: st.untrusted[0], size: 5, opacity: 0.5, symbol: "circle-open" },
        hovertemplate: hover + "<br>%{text}<extra>not vouched for</extra>" });
    }
    const edge = (D.edges[Math.min(i, j) + "," + Math.max(i, j)] || []).slice();
    edge.sort((a, b) => F.predicted[a][i] - F.predicted[b][i]);
    const er = edge.map((k) => F.predicted[k]);
    traces.push({ type: "scatter", mode: "lines", name: st.frontier[2], x: col(er, i), y: col(er, j),
      line: { color: st.frontier[0], width: 2.5 }, hoverinfo: "skip" });
    const groups = {};
    for (const m of D.references.concat(D.verified)) (groups[m.kind] = groups[m.kind] || []).push(m);
    for (const kind of Object.keys(groups)) {
      const s = st[kind] || st.verified, items = groups[kind];
      traces.push({ type: "scatter", mode: "markers", name: s[2], x: col(items.map((m) => m.metrics), i),
        y: col(items.map((m) => m.metrics), j), text: items.map((m) => esc(m.label) + "<br>" + coefText(m.coefficients)),
        marker: { color: s[0], symbol: s[1], size: kind === "verified" ? 14 : 13, line: { color: "white", width: 1 } },
        hovertemplate: "%{text}<br>" + hover + "<extra>measured</extra>" });
    }
    const c = D.style.chosen;  // the chosen point is drawn as shapes (moved without redrawing the front): its legend entry
    traces.push({ type: "scatter", mode: "markers", name: c[2] + ", ±" + D.band_std + " std", x: [null], y: [null],
      marker: { color: c[0], symbol: c[1], size: 14, line: { width: 3 } }, hoverinfo: "skip" });
    chosenTrace = traces.length - 1;
    return traces;
  }
  // The chosen merge and its ±band_std std bars, drawn in an SVG laid over the plot: moving them
  // costs microseconds, where any plotly update (a restyle, even a shape relayout) redraws the
  // 1000 points of the front (80-160 ms on a laptop-class core, over the 50 ms budget).
  const SVG = "http://www.w3.org/2000/svg";
  let overlay = null;
  function makeOverlay() {
    const host = document.getElementById("front");
    host.style.position = "relative";
    overlay = document.createElementNS(SVG, "svg");
    overlay.setAttribute("id", "chosen-overlay");
    overlay.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none;overflow:visible;z-index:5";
    for (const kind of ["path", "circle"]) overlay.appendChild(document.createElementNS(SVG, kind));
    host.appendChild(overlay);
  }
  function placeChosen() {
    const gd = document.getElementById("front"), L = gd._fullLayout, d = current;
    if (!overlay || !L || !L.xaxis || !d) return;
    const [i, j] = pair, sz = L._size, xr = L.xaxis.range, yr = L.yaxis.range;
    const px = (x) => sz.l + ((x - xr[0]) / (xr[1] - xr[0])) * sz.w;
    const py = (y) => sz.t + (1 - (y - yr[0]) / (yr[1] - yr[0])) * sz.h;
    const x = d.predicted[i] * scaleOf(i), y = d.predicted[j] * scaleOf(j);
    const bar = (k) => (finite(d.std[k]) ? D.band_std * d.std[k] * scaleOf(k) : 0);
    const X = px(x), Y = py(y), x0 = px(x - bar(i)), x1 = px(x + bar(i)), y0 = py(y - bar(j)), y1 = py(y + bar(j));
    const colour = d.trusted ? D.style.chosen[0] : "#8C8C8C";
    const [path, circle] = overlay.childNodes;
    path.setAttribute("d", "M" + x0 + " " + Y + "H" + x1 + "M" + x0 + " " + (Y - 3) + "V" + (Y + 3) + "M" + x1 + " " + (Y - 3) + "V" + (Y + 3) +
      "M" + X + " " + y0 + "V" + y1 + "M" + (X - 3) + " " + y0 + "H" + (X + 3) + "M" + (X - 3) + " " + y1 + "H" + (X + 3));
    path.setAttribute("stroke", D.style.chosen[0]); path.setAttribute("stroke-width", "2"); path.setAttribute("fill", "none");
    circle.setAttribute("cx", X); circle.setAttribute("cy", Y); circle.setAttribute("r", "10");
    circle.setAttribute("stroke", colour); circle.setAttribute("stroke-width", "3"); circle.setAttribute("fill", "none");
    overlay.dataset.x = x; overlay.dataset.y = y;
  }
  // Fixed ranges (the front, the measured points and every ± bar on the front, padded): moving the chosen
  // point never rescales the axes, and the page redraws its shapes only.
  function range(k) {
    let lo = Infinity, hi = -Infinity;
    const see = (v, s) => { if (finite(v)) { const b = finite(s) ? D.band_std * s : 0; lo = Math.min(lo, v - b); hi = Math.max(hi, v + b); } };
    F.predicted.forEach((p, r) => see(p[k], F.std[r][k]));
    D.references.concat(D.verified).forEach((m) => see(m.metrics[k], 0));
    const pad = Math.max(0.06 * (hi - lo), 1e-9);
    return [(lo - pad) * scaleOf(k), (hi + pad) * scaleOf(k)];
  }
  function layout(i, j) {
    const axis = (k) => ({ title: { text: D.tasks[k] + ": " + (D.metrics[D.tasks[k]] || "metric") + unitOf(k) }, zeroline: false,
                           range: range(k), autorange: false, hoverformat: ".2f", automargin: true });
    // each reference named where it hides no marker (offsets placed by explorer/figures.py for this plot size)
    const offsets = D.label_offsets[i + "," + j] || [];
    const annotations = D.references.map((m, n) => {
      const colour = (D.style[m.kind] || D.style.verified)[0], o = offsets[n] || [0, 16];
      return { x: m.metrics[i] * scaleOf(i), y: m.metrics[j] * scaleOf(j), xref: "x", yref: "y", text: esc(m.label),
               showarrow: true, ax: o[0], ay: -o[1], arrowhead: 0, arrowwidth: 1, arrowcolor: colour, standoff: 7,
               font: { size: 11, color: colour }, bgcolor: "rgba(255,255,255,0.8)" };
    });
    return { margin: { l: 60, r: 10, t: 10, b: 10 }, xaxis: axis(i), yaxis: axis(j), hovermode: "closest", annotations: annotations,
             legend: { orientation: "h", y: -0.18, font: { size: 11 } }, font: { family: "Inter, Helvetica, Arial, sans-serif", size: 12 },
             plot_bgcolor: "#fff", paper_bgcolor: "#fff" };
  }
  let current = null;
  function drawFront() {
    const [i, j] = pair;
    Plotly.react("front", frontTraces(i, j, current), layout(i, j), { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ["lasso2d", "select2d", "sendDataToCloud"] });
  }
  function buildPairs() {
    const xs = document.getElementById("pair-x"), ys = document.getElementById("pair-y");
    for (const sel of [xs, ys]) D.tasks.forEach((t, k) => { const o = document.createElement("option"); o.value = k; o.textContent = t; sel.appendChild(o); });
    xs.value = pair[0]; ys.value = pair[1];
    const change = () => { const a = +xs.value, b = +ys.value; if (a !== b) { pair = [a, b]; drawFront(); } };
    xs.addEventListener("change", change); ys.addEventListener("change", change);
  }

  // --- the chosen merge -------------------------------------------------------------------------
  function renderChosen(d, floors, allZero) {
    const panel = document.querySelector("section.chosen");
    panel.dataset.frontIndex = d.index;
    const status = [];
    if (allZero) status.push('<div class="note">All importances are zero; using equal importance.</div>');
    if (!d.feasible) {
      const shortBy = D.tasks.map((t, k) => (d.shortfall[k] > 0 ? t + " by " + value(k, d.shortfall[k], 2).replace("%", "points") : null)).filter(Boolean);
      status.push('<div class="warn">No front point meets every minimum; showing the closest one (short: ' + esc(shortBy.join(", ")) + ").</div>");
    }
    const reason = notVouchedReason(d);
    status.push(reason ? '<div class="warn">The surrogates do not vouch for this point (' + esc(reason) + "): its prediction may be off; a measurement settles it.</div>"
                       : '<div class="ok">Vouched for: the surrogates are accurate this close to the measured points (prediction, not a measurement).</div>');
    document.getElementById("status").innerHTML = status.join("");
    document.getElementById("lines").innerHTML = D.tasks.map((_, k) => "<li>" + esc(glance(k, d.predicted[k], d.std[k])) + "</li>").join("");
    const head = "<tr><th>task</th><th>c</th><th>predicted</th><th>± std</th><th>minimum</th></tr>";
    const body = D.tasks.map((t, k) => "<tr><td>" + esc(t) + "</td><td>" +
      d.coefficients[k].toFixed(4) + "</td><td>" + value(k, d.predicted[k], 2) + "</td><td>" +
      (finite(d.std[k]) ? value(k, d.std[k], 2) : "—") + "</td><td>" + (floors[k] === null ? "—" : value(k, floors[k], 2)) + "</td></tr>").join("");
    document.getElementById("table").innerHTML = "<table>" + head + body + "</table>";
    document.getElementById("coefficients").textContent = coefText(d.coefficients);
    const w = D.tasks.map((t, k) => t + "=" + short(parseFloat(weightInputs[k].value))).join(",");
    const m = D.tasks.map((t, k) => (floors[k] === null ? null : t + "=" + String(floors[k]))).filter(Boolean).join(",");
    document.getElementById("command").textContent = "merge-explorer export SPEC --weights " + w + (m ? " --min " + m : "") + " --out DIR";
  }

  function update() {
    const t0 = performance.now();
    let weights = weightInputs.map((x) => parseFloat(x.value));
    const allZero = !weights.some((x) => x > 0);
    if (allZero) weights = weights.map(() => 1.0);
    const floors = floorsFromSliders();
    weightInputs.forEach((x, k) => { weightLabels[k].textContent = parseFloat(x.value).toFixed(1); });
    minInputs.forEach((x, k) => { minLabels[k].textContent = floors[k] === null ? "no bound" : value(k, floors[k], 2); });
    const d = decide(weights, floors);
    current = d;
    renderChosen(d, floors, allZero);
    placeChosen();
    writeHash(weights, floors);
    timings.push(performance.now() - t0);
    return d;
  }

  function renderAbout() {
    document.getElementById("title").textContent = "merge-explorer: " + D.experiment + " (" + D.method + ")";
    document.getElementById("meta").textContent = "experiment " + D.experiment + " · key " + D.experiment_key.slice(0, 12) +
      " · written " + D.created + " · merge-explorer " + D.version + " · " + D.evaluations.points + " merges measured (" +
      D.evaluations.task_evaluations + " real evaluations) · " + D.vouched.vouched_for + " of " + D.vouched.front_points +
      " front points vouched for";
    document.getElementById("prediction-note").textContent = D.prediction_note;
    document.getElementById("notes").innerHTML = D.notes.concat(problems).map((n) => '<div class="warn">' + esc(n) + "</div>").join("");
    const v = D.verified;
    document.getElementById("verified").innerHTML = v.length
      ? "<table><tr><th>merge</th><th>c</th>" + D.tasks.map((t, k) => "<th>" + esc(t) + unitOf(k) + "</th>").join("") + "</tr>" +
        v.map((m) => "<tr><td>" + esc(m.label) + "</td><td>" + m.coefficients.map((c) => c.toFixed(3)).join(", ") + "</td>" +
          m.metrics.map((x, k) => "<td>" + value(k, x, 2) + "</td>").join("") + "</tr>").join("") + "</table>"
      : "<p class=\"meta\">No merge verified yet: verified merges appear here and as orange stars once a choice is measured (merge-explorer verify).</p>";
    const refs = D.references.map((m) => "<tr><td>" + esc(m.label) + "</td>" + m.metrics.map((x, k) => "<td>" + value(k, x, 2) + "</td>").join("") + "</tr>").join("");
    document.getElementById("about").innerHTML =
      "<p>Measured references (real evaluations):</p><table><tr><th>merge</th>" + D.tasks.map((t, k) => "<th>" + esc(t) + unitOf(k) + "</th>").join("") + "</tr>" + refs + "</table>" +
      "<p>Surrogates (R², leave-one-out): " + D.surrogates.map((s) => esc(s.task) + " " + (finite(s.r2_cv) ? s.r2_cv.toFixed(3) : "—") + " (" + esc(s.family) + ")").join(", ") + ".</p>" +
      "<p>Choices come from the " + esc(D.vouched.choices_from) + " (" + D.vouched.vouched_for + " of " + D.vouched.front_points +
      "), chosen as <code>merge-explorer pick</code> chooses: the augmented achievement function over the front.</p>" +
      "<details><summary>Checkpoints (SHA-256)</summary><table><tr><th>checkpoint</th><th>SHA-256</th></tr>" +
      D.checkpoints.map((c) => "<tr><td>" + esc(c.name) + '</td><td><code class="hash">' + esc(c.sha256) + "</code></td></tr>").join("") + "</table></details>";
  }

  buildSliders();
  buildPairs();
  const fromLink = readHash();
  if (!fromLink) applyPreferences(D.preferences.weights || {}, D.preferences.minimums || {});
  renderAbout();
  current = update();
  drawFront();
  makeOverlay();
  placeChosen();
  document.getElementById("front").on("plotly_afterplot", placeChosen);
  document.getElementById("reset").addEventListener("click", () => {
    weightInputs.forEach((x) => { x.value = 1; });
    minInputs.forEach((x, k) => { x.value = offValue(k); });
    update();
  });
  document.getElementById("copy").addEventListener("click", () => {
    const text = document.getElementById("coefficients").textContent;
    if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  });
  window.addEventListener("hashchange", () => { if (readHash()) { renderAbout(); update(); } });
  window.mergeExplorer = { decide: decide, update: update, sum: sum, timings: timings, data: D };
})();
