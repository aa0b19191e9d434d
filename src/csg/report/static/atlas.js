/* csg unit atlas: one card per filter, drawn from window.CSG_ATLAS (schema csg.atlas/1).
 *
 * Offline by design: the data arrive by <script> (atlas.data.js), thumbnails are sprite sheets, nothing
 * is fetched. Cards are rendered incrementally: the first chunk at once, the next ones when a sentinel
 * below the grid comes near the viewport (IntersectionObserver), so K = 2048 filters stay responsive.
 * The state (layer, sort, class filter, search, open filter) lives in the URL hash, so a view can be
 * linked; inside a frame the page reports state changes to its parent and accepts them from it
 * (the side-by-side page uses this to link two atlases).
 */
(function () {
  "use strict";
  var A = window.CSG_ATLAS;
  var app = document.getElementById("app");
  if (!A || A.schema !== "csg.atlas/1") {
    app.innerHTML = '<p class="fatal">atlas.data.js is missing or not a csg.atlas/1 file; rebuild with <code>csg atlas RUN</code>.</p>';
    console.error("csg atlas: no csg.atlas/1 data");
    return;
  }
  var T0 = performance.now();
  var CHUNK = 48;
  var CARD_SCALE = 2;   // a thumbnail tile is shown at up to 2x its sheet size on a card ...
  var CARD_TILE = 56;   // ... and at most this many px
  var DETAIL_TILE = 132;
  var names = A.classes;
  var C = names.length;
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#79706e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  function colour(c) {
    if (c === null || c === undefined || c < 0) return "#9aa3ab";
    return c < PALETTE.length ? PALETTE[c] : "hsl(" + ((c * 137.508) % 360).toFixed(1) + ",55%,45%)";
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (ch) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[ch];
    });
  }
  function num(v, d) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    return Number(v).toFixed(d === undefined ? 3 : d);
  }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
  function className(c) { return c === null || c === undefined ? "none" : names[c]; }

  var CRIT_LABEL = {gate: "gate", mi: "MI argmax", ablation: "largest ablation drop"};
  var CRIT_SHORT = {gate: "gate", mi: "MI", ablation: "ablation"};
  var CRIT_HELP = {
    gate: "argmax over classes of the method's class-filter matrix (gate.npy: CSG gate, ICNN assignment, PICNN Q)",
    mi: "argmax over classes of MI(a_k; 1[y = c]); MI is symmetric, so a filter that is silent on a class also " +
        "tells much about it: compare with the top images",
    ablation: "the class that loses most accuracy when this filter alone is zeroed"};

  // ---- state ------------------------------------------------------------------------------------
  var state = {layer: 0, sort: "filter", crit: "class", cls: -1, agree: "all", q: "", open: null};
  var L, U, K, order = [], rendered = 0, focusPos = 0, maxMi = 1e-12, maxDrop = 1e-12, embedded = false;

  function readHash() {
    var h = location.hash.replace(/^#/, "");
    if (!h) return;
    h.split("&").forEach(function (kv) {
      var p = kv.split("="), k = decodeURIComponent(p[0]), v = decodeURIComponent(p[1] || "");
      if (k === "layer" || k === "cls") state[k] = parseInt(v, 10);
      else if (k === "open") state.open = v === "" ? null : parseInt(v, 10);
      else if (k === "embed") embedded = v === "1";
      else if (k in state) state[k] = v;
    });
    if (!(state.layer >= 0 && state.layer < A.layers.length)) state.layer = 0;
    if (!(state.cls >= -1 && state.cls < C)) state.cls = -1;
  }
  function writeHash() {
    var parts = ["layer=" + state.layer, "sort=" + state.sort, "crit=" + state.crit, "cls=" + state.cls,
                 "agree=" + state.agree, "q=" + encodeURIComponent(state.q)];
    if (state.open !== null) parts.push("open=" + state.open);
    if (embedded) parts.push("embed=1");
    history.replaceState(null, "", "#" + parts.join("&"));
  }
  function announce() {  // tell a parent frame (the side-by-side page) what the user changed
    writeHash();
    if (window.parent !== window) {
      window.parent.postMessage({csgAtlas: "state", state: {sort: state.sort, crit: state.crit, cls: state.cls,
                                 agree: state.agree, q: state.q}}, "*");
    }
  }

  // ---- layer data --------------------------------------------------------------------------------
  function useLayer(i) {
    L = A.layers[i];
    U = L.units;
    K = L.num_filters;
    // bar scales shared by every card of the layer (comparable across cards): the 95th percentile of the
    // per-filter maxima, so one extreme filter does not flatten all the others (taller bars are clipped)
    maxMi = Math.max(1e-12, percentile(U.mi_max, 0.95));
    maxDrop = U.max_drop ? Math.max(1e-12, percentile(U.max_drop, 0.95)) : 1;
  }
  function percentile(values, p) {
    var v = values.filter(function (x) { return x !== null && isFinite(x); }).sort(function (a, b) { return a - b; });
    return v.length ? v[Math.min(v.length - 1, Math.floor(p * (v.length - 1) + 0.5))] : 0;
  }

  // ---- sprites -------------------------------------------------------------------------------------
  // filter f, tile r (-1 = its whole block) -> {src, x, y, w, h, sheetW, sheetH} in sheet pixels
  function spriteBox(f, r, kind) {
    var S = L.sprites, th = S.tile[0], tw = S.tile[1], g = S.gap, bc = S.block[0], br = S.block[1];
    var sheet = Math.floor(f / S.per_sheet), j = f % S.per_sheet;
    var inSheet = Math.min(S.per_sheet, K - sheet * S.per_sheet);
    var cols = Math.min(S.columns, inSheet), rows = Math.ceil(inSheet / cols);
    var bw = bc * (tw + g), bh = br * (th + g);
    var x = (j % cols) * bw, y = Math.floor(j / cols) * bh;
    var box = {src: S.sheets[kind][sheet], sheetW: cols * bw, sheetH: rows * bh};
    if (r < 0) { box.x = x; box.y = y; box.w = bw - g; box.h = bh - g; }
    else { box.x = x + (r % bc) * (tw + g); box.y = y + Math.floor(r / bc) * (th + g); box.w = tw; box.h = th; }
    return box;
  }
  function spriteHTML(box, scale, alt, cls) {
    var s = scale;
    return '<div class="' + (cls || "sprite") + '" style="width:' + (box.w * s).toFixed(1) + "px;height:" +
      (box.h * s).toFixed(1) + 'px"><img src="' + esc(box.src) + '" alt="' + esc(alt) + '" draggable="false" ' +
      'style="width:' + (box.sheetW * s).toFixed(1) + "px;height:" + (box.sheetH * s).toFixed(1) + "px;left:" +
      (-box.x * s).toFixed(1) + "px;top:" + (-box.y * s).toFixed(1) + 'px"></div>';
  }
  function cardScale() {
    var tw = L.sprites.tile[1];
    return Math.min(CARD_SCALE, CARD_TILE / tw, Math.max(1, 168 / (L.sprites.block[0] * tw)));
  }

  // ---- small bars --------------------------------------------------------------------------------
  function topClasses(row, n) {
    var idx = row.map(function (_, i) { return i; });
    if (row.length <= n) return idx;
    idx.sort(function (a, b) { return (row[b] || 0) - (row[a] || 0) || a - b; });
    return idx.slice(0, n);
  }
  function barsSVG(row, scale, title, signed) {
    if (!row) return "";
    var idx = topClasses(row, 24), W = 168, H = signed ? 26 : 22, n = idx.length, bw = W / n;
    var base = signed ? H * 0.72 : H, parts = [];
    for (var j = 0; j < n; j++) {
      var c = idx[j], v = row[c];
      if (v === null || v === undefined) continue;
      var hgt = Math.min(1, Math.abs(v) / scale) * (signed && v < 0 ? H - base : base);
      var y = v >= 0 ? base - hgt : base;
      parts.push('<rect x="' + (j * bw + 0.5).toFixed(1) + '" y="' + y.toFixed(1) + '" width="' +
        Math.max(1, bw - 1).toFixed(1) + '" height="' + Math.max(0.5, hgt).toFixed(1) + '" fill="' + colour(c) +
        '"' + (v < 0 ? ' opacity="0.45"' : "") + "><title>" + esc(names[c]) + ": " + num(v) + "</title></rect>");
    }
    var line = signed ? '<line x1="0" x2="' + W + '" y1="' + base + '" y2="' + base + '" class="base"/>' : "";
    return '<svg class="bars" viewBox="0 0 ' + W + " " + H + '" width="' + W + '" height="' + H +
      '" role="img" aria-label="' + esc(title) + '">' + line + parts.join("") + "</svg>";
  }
  function meter(v, lo, hi) {
    var f = v === null || v === undefined ? 0 : Math.max(0, Math.min(1, (v - lo) / (hi - lo)));
    return '<span class="meter"><span style="width:' + (100 * f).toFixed(1) + '%"></span></span>';
  }

  // ---- order, filter, search ---------------------------------------------------------------------
  var SORTS = [["filter", "filter index"], ["mi_max", "MI (max over classes)"], ["selectivity", "class selectivity"],
               ["max_drop", "largest ablation drop"], ["iou_object", "IoU with the object"],
               ["iou_clutter", "IoU with the clutter"], ["top_activation", "top activation"]];
  function sortAvailable(key) {
    if (key === "filter" || key === "top_activation") return true;
    return Array.isArray(U[key]);
  }
  function sortValue(key, f) {
    if (key === "top_activation") return U.top_activations[f][0];
    return U[key][f];
  }
  function parseQuery(q) {
    q = q.trim();
    if (!q) return null;
    var set = {}, any = false;
    q.split(/[\s,]+/).forEach(function (part) {
      var m = part.match(/^#?(\d+)(?:\s*[-–:]\s*(\d+))?$/);
      if (!m) return;
      var a = parseInt(m[1], 10), b = m[2] === undefined ? a : parseInt(m[2], 10);
      for (var i = Math.min(a, b); i <= Math.max(a, b) && i < K; i++) { set[i] = true; any = true; }
    });
    return any ? set : {};
  }
  function computeOrder() {
    var keep = [], crit = U[state.crit] ? state.crit : "class", wanted = parseQuery(state.q);
    for (var f = 0; f < K; f++) {
      if (state.cls >= 0 && U[crit][f] !== state.cls) continue;
      if (state.agree === "agree" && U.agree[f] !== 1) continue;
      if (state.agree === "disagree" && U.agree[f] !== 0) continue;
      if (wanted && !wanted[f]) continue;
      keep.push(f);
    }
    var key = sortAvailable(state.sort) ? state.sort : "filter";
    if (key !== "filter") {
      keep.sort(function (a, b) {
        var va = sortValue(key, a), vb = sortValue(key, b);
        var na = va === null || va === undefined, nb = vb === null || vb === undefined;
        if (na !== nb) return na ? 1 : -1;   // missing values last
        if (!na && vb !== va) return vb - va;  // descending
        return a - b;                         // ties: lower filter index first
      });
    }
    order = keep;
  }

  // ---- cards ---------------------------------------------------------------------------------------
  function agreeBadge(f) {
    var a = U.agree[f];
    if (a === 1) return '<span class="agree yes" title="every criterion names the same class">agree</span>';
    if (a === 0) return '<span class="agree no" title="the criteria name different classes">differ</span>';
    return "";
  }
  function critLine(f) {
    return L.criteria.map(function (cr) {
      var c = U["class_" + cr][f];
      return '<span class="crit" title="' + esc(CRIT_LABEL[cr]) + '"><i style="background:' + colour(c) + '"></i>' +
        esc(CRIT_SHORT[cr]) + " " + esc(className(c)) + "</span>";
    }).join("");
  }
  function cardHTML(f, pos) {
    var c = U["class"][f], sc = cardScale();
    var stats = ['<span title="class selectivity (0 to 1)">selectivity ' + num(U.selectivity[f], 2) +
                 meter(U.selectivity[f], 0, 1) + "</span>"];
    if (U.iou_object) stats.push('<span title="mean IoU of the ActivMap region with the object / with the clutter, over the top images">IoU ' +
                                 num(U.iou_object[f], 2) + ' <span class="faint">/ ' + num(U.iou_clutter[f], 2) + "</span></span>");
    return '<article class="card' + (U.dead[f] ? " dead" : "") + '" data-filter="' + f + '" data-pos="' + pos +
      '" tabindex="' + (pos === focusPos ? 0 : -1) + '" style="--cc:' + colour(c) + '" aria-label="filter ' + f + ", " +
      esc(className(c)) + '">' +
      '<header><span class="fid">#' + f + '</span><span class="chip" style="background:' + colour(c) + '">' +
      esc(className(c)) + "</span>" + agreeBadge(f) + (U.dead[f] ? '<span class="deadtag">dead</span>' : "") + "</header>" +
      spriteHTML(spriteBox(f, -1, "activ"), sc, "top images of filter " + f, "thumbs") +
      '<div class="rowlabel"><span>MI by class</span><b title="largest MI over classes">' + num(U.mi_max[f]) + "</b></div>" +
      barsSVG(U.mi[f], maxMi, "MI by class") +
      (U.drop ? '<div class="rowlabel"><span>accuracy drop if zeroed</span><b title="largest per-class drop">' +
        pct(U.max_drop[f]) + "</b></div>" + barsSVG(U.drop[f], maxDrop, "ablation drop by class", true) : "") +
      '<div class="stats">' + stats.join("") + "</div>" +
      '<div class="crits">' + critLine(f) + "</div></article>";
  }

  var grid, sentinel, countEl, observer;
  function renderMore() {
    if (rendered >= order.length) return;
    var end = Math.min(order.length, rendered + CHUNK), html = [];
    for (var i = rendered; i < end; i++) html.push(cardHTML(order[i], i));
    grid.insertAdjacentHTML("beforeend", html.join(""));
    rendered = end;
    document.body.setAttribute("data-cards", String(rendered));
    requestAnimationFrame(keepFilling);
  }
  function keepFilling() {  // the observer fires on changes only: keep going while the sentinel is near
    if (rendered < order.length && sentinel.getBoundingClientRect().top < window.innerHeight + 900) renderMore();
  }
  function rerender() {
    computeOrder();
    grid.innerHTML = "";
    rendered = 0;
    focusPos = 0;
    countEl.textContent = order.length === K ? K + " filters" : order.length + " of " + K + " filters";
    document.body.setAttribute("data-shown", String(order.length));
    if (!order.length) grid.innerHTML = '<p class="empty">No filter matches.</p>';
    renderMore();
  }
  function cardAt(pos) {
    while (pos >= rendered && rendered < order.length) renderMore();
    return grid.querySelector('.card[data-pos="' + pos + '"]');
  }
  function focusCard(pos) {
    if (!order.length) return;
    pos = Math.max(0, Math.min(order.length - 1, pos));
    var old = grid.querySelector('.card[tabindex="0"]');
    if (old) old.tabIndex = -1;
    var el = cardAt(pos);
    focusPos = pos;
    if (el) { el.tabIndex = 0; el.focus({preventScroll: false}); }
  }
  function columns() {
    var cards = grid.querySelectorAll(".card");
    if (cards.length < 2) return 1;
    var top = cards[0].offsetTop, n = 0;
    for (var i = 0; i < cards.length && cards[i].offsetTop === top; i++) n++;
    return Math.max(1, n);
  }

  // ---- detail view -------------------------------------------------------------------------------
  var detail;
  function barsTable(row, title, signed, fmt) {
    if (!row) return "";
    var idx = topClasses(row, 30), scale = 1e-12;
    idx.forEach(function (c) { scale = Math.max(scale, Math.abs(row[c] || 0)); });
    var rows = idx.map(function (c) {
      var v = row[c], w = v === null ? 0 : 100 * Math.abs(v) / scale;
      return '<tr><td class="cn"><i style="background:' + colour(c) + '"></i>' + esc(names[c]) + '</td><td class="bar">' +
        '<span class="' + (v < 0 ? "neg" : "pos") + '" style="width:' + w.toFixed(1) + "%;background:" + colour(c) +
        '"></span></td><td class="v">' + fmt(v) + "</td></tr>";
    });
    return '<div class="dtable"><h3>' + esc(title) + "</h3><table>" + rows.join("") + "</table></div>";
  }
  function openDetail(f, fromUser) {
    state.open = f;
    var c = U["class"][f], S = L.sprites, tw = S.tile[1];
    var scale = Math.min(4, DETAIL_TILE / tw), kk = L.top_k, figs = [];
    for (var r = 0; r < kk; r++) {
      var n = U.top_images[f][r], y = U.top_labels[f][r], p = U.top_predictions[f][r];
      var cap = '<b>' + (r + 1) + ".</b> image " + n + "<br>" + esc(className(y)) +
        (p >= 0 && p !== y ? ' <span class="wrong">→ ' + esc(className(p)) + "</span>" : "") +
        "<br>a = " + num(U.top_activations[f][r]);
      if (U.top_iou_object) cap += "<br>IoU obj " + num(U.top_iou_object[f][r], 2) + " · clutter " + num(U.top_iou_clutter[f][r], 2);
      figs.push('<figure class="pairfig"><div class="twin">' +
        spriteHTML(spriteBox(f, r, "activ"), scale, "ActivMap of filter " + f + " on image " + n, "big") +
        (S.sheets.grad ? spriteHTML(spriteBox(f, r, "grad"), scale, "GradMap of filter " + f + " on image " + n, "big") : "") +
        "</div><figcaption>" + cap + "</figcaption></figure>");
    }
    var crits = L.criteria.map(function (cr) {
      var cc = U["class_" + cr][f];
      return '<tr><th title="' + esc(CRIT_HELP[cr]) + '">' + esc(CRIT_LABEL[cr]) + '</th><td><i class="dot" style="background:' + colour(cc) + '"></i>' +
        esc(className(cc)) + "</td></tr>";
    }).join("");
    var nb = "";
    if (U.neighbours) {
      nb = '<div class="neigh"><h3>Weight-correlation neighbours</h3><div class="nlist">' +
        U.neighbours[f].map(function (j, i) {
          return '<button class="ncard" data-goto="' + j + '" title="open filter ' + j + '">' +
            spriteHTML(spriteBox(j, 0, "activ"), Math.min(2, 48 / tw), "top image of filter " + j, "nthumb") +
            '<span>#' + j + '<br><i class="dot" style="background:' + colour(U["class"][j]) + '"></i>' +
            esc(className(U["class"][j])) + "<br>cos " + num(U.neighbour_corr[f][i], 2) + "</span></button>";
        }).join("") + "</div></div>";
    }
    var facts = "<tr><th>MI max</th><td>" + num(U.mi_max[f]) + "</td></tr><tr><th>class selectivity</th><td>" +
      num(U.selectivity[f]) + " " + meter(U.selectivity[f], 0, 1) + "</td></tr><tr><th>top class by mean activation</th><td>" +
      esc(className(U.top_class[f])) + "</td></tr>" +
      (U.max_drop ? "<tr><th>largest drop</th><td>" + pct(U.max_drop[f]) + "</td></tr>" : "") +
      (U.iou_object ? "<tr><th>IoU object / clutter</th><td>" + num(U.iou_object[f]) + " / " + num(U.iou_clutter[f]) + "</td></tr>" : "") +
      "<tr><th>ActivMap level (top " + Math.round(100 * A.settings.quantile) + "%)</th><td>" + num(U.level[f]) + "</td></tr>";
    var pos = order.indexOf(f);
    detail.innerHTML = '<div class="dpanel" role="dialog" aria-modal="true" aria-labelledby="dtitle" data-filter="' + f + '">' +
      '<header><h2 id="dtitle">Filter #' + f + ' <span class="chip" style="background:' + colour(c) + '">' +
      esc(className(c)) + "</span> " + agreeBadge(f) + (U.dead[f] ? '<span class="deadtag">dead</span>' : "") +
      '</h2><span class="where">' + esc(L.name) + (pos >= 0 ? " · " + (pos + 1) + " of " + order.length + " in this view" : "") +
      '</span><span class="nav"><button data-step="-1" title="previous (←)">‹ prev</button><button data-step="1" title="next (→)">next ›</button>' +
      '<button class="close" title="close (Esc)">✕</button></span></header>' +
      '<div class="dbody"><section class="imgs"><h3>Top ' + kk + " images: ActivMap region" +
      (S.sheets.grad ? " (left) and GradMap (right)" : "") + '</h3><div class="figs">' + figs.join("") + "</div>" + nb +
      '</section><section class="side"><table class="facts">' + crits + facts + "</table>" +
      barsTable(U.mi[f], "MI by class", false, function (v) { return num(v); }) +
      barsTable(U.drop ? U.drop[f] : null, "Accuracy drop when zeroed", true, pct) + "</section></div></div>";
    detail.hidden = false;
    document.body.classList.add("modal");
    detail.querySelector(".close").focus();
    if (fromUser) writeHash();
  }
  function closeDetail() {
    if (detail.hidden) return;
    var f = state.open;
    detail.hidden = true;
    detail.innerHTML = "";
    document.body.classList.remove("modal");
    state.open = null;
    writeHash();
    var pos = order.indexOf(f);
    if (pos >= 0) focusCard(pos);
  }
  function stepDetail(d) {
    var pos = order.indexOf(state.open);
    if (!order.length) return;
    pos = pos < 0 ? 0 : (pos + d + order.length) % order.length;
    openDetail(order[pos], true);
  }

  // ---- the page -------------------------------------------------------------------------------------
  function options(list, current) {
    return list.map(function (o) {
      return '<option value="' + esc(o[0]) + '"' + (String(o[0]) === String(current) ? " selected" : "") + ">" + esc(o[1]) + "</option>";
    }).join("");
  }
  function summary() {
    var r = A.run || {}, agreeN = 0, defined = 0;
    for (var f = 0; f < K; f++) { if (U.agree[f] !== null) { defined++; if (U.agree[f] === 1) agreeN++; } }
    var bits = [r.method, r.data, r.arch].filter(Boolean).map(esc);
    bits.push(K + " filters in " + esc(L.name), A.num_images + " test images");
    if (r.accuracy !== null && r.accuracy !== undefined) bits.push("accuracy " + num(r.accuracy, 4));
    if (r.mis !== null && r.mis !== undefined) bits.push("MIS " + num(r.mis, 4));
    var agreeTxt = defined ? "criteria agree on " + agreeN + " of " + defined + " filters (" +
      L.criteria.map(function (c) { return CRIT_SHORT[c]; }).join(", ") + ")" : "";
    return {line: bits.join(" · "), agree: agreeTxt};
  }
  function legend() {
    var counts = new Array(C).fill(0), crit = U[state.crit] ? state.crit : "class";
    for (var f = 0; f < K; f++) { var c = U[crit][f]; if (c !== null && c >= 0) counts[c]++; }
    return names.map(function (nm, c) {
      return '<button class="lg' + (state.cls === c ? " on" : "") + '" data-cls="' + c + '"><i style="background:' +
        colour(c) + '"></i>' + esc(nm) + " <small>" + counts[c] + "</small></button>";
    }).join("");
  }
  function controls() {
    var layers = A.layers.map(function (l, i) { return [i, l.name + " (" + l.num_filters + ")"]; });
    var sorts = SORTS.filter(function (s) { return sortAvailable(s[0]); });
    var crits = [["class", "card class"]].concat(L.criteria.map(function (c) { return ["class_" + c, CRIT_LABEL[c]]; }));
    var classes = [[-1, "all classes"]].concat(names.map(function (n, i) { return [i, n]; }));
    return (A.layers.length > 1 ? '<label>layer <select id="layer">' + options(layers, state.layer) + "</select></label>" : "") +
      '<label>sort by <select id="sort">' + options(sorts, state.sort) + "</select></label>" +
      '<label>class by <select id="crit">' + options(crits, state.crit) + "</select></label>" +
      '<label><select id="cls" aria-label="class">' + options(classes, state.cls) + "</select></label>" +
      (L.criteria.length > 1 ? '<label><select id="agree" aria-label="agreement">' +
        options([["all", "agree or not"], ["agree", "criteria agree"], ["disagree", "criteria differ"]], state.agree) + "</select></label>" : "") +
      '<label class="search">filter <input id="q" type="search" placeholder="12, 3-7" value="' + esc(state.q) +
      '" aria-label="search by filter index" size="9"></label><span id="count" class="count"></span>' +
      '<button id="help" class="help" title="keyboard shortcuts">?</button>';
  }
  function build() {
    useLayer(state.layer);
    if (!U[state.crit]) state.crit = "class";
    var s = summary(), r = A.run || {};
    app.innerHTML = '<header class="top' + (embedded ? " embed" : "") + '"><div class="titles"><h1>' + esc(A.title || "Unit atlas") +
      '</h1><p class="sub">' + s.line + "</p>" + (s.agree ? '<p class="sub">' + esc(s.agree) + "</p>" : "") + "</div>" +
      '<div class="legendnote"><span class="key activ"></span>ActivMap region: filter ≥ its top-' +
      Math.round(100 * A.settings.quantile) + "% level over the test split" +
      (A.has_gradmap ? ' <span class="key grad"></span>GradMap region' : "") + "</div></header>" +
      '<nav class="controls">' + controls() + '</nav><div class="legend" id="legend">' + legend() + "</div>" +
      '<main><div id="grid" class="grid"></div><div id="sentinel" aria-hidden="true"></div></main>' +
      '<div id="detail" class="detail" hidden></div>' +
      '<div id="keys" class="keys" hidden><div><h3>Keyboard</h3><p><kbd>←</kbd><kbd>→</kbd><kbd>↑</kbd><kbd>↓</kbd> move between cards · ' +
      "<kbd>Enter</kbd> open · <kbd>Esc</kbd> close · in a detail view <kbd>←</kbd><kbd>→</kbd> previous / next · " +
      "<kbd>/</kbd> search · <kbd>s</kbd> next sort</p><button class=\"close\">close</button></div></div>";
    grid = document.getElementById("grid");
    sentinel = document.getElementById("sentinel");
    countEl = document.getElementById("count");
    detail = document.getElementById("detail");
    if (observer) observer.disconnect();
    observer = new IntersectionObserver(function (entries) {
      if (entries.some(function (e) { return e.isIntersecting; })) renderMore();
    }, {rootMargin: "900px 0px"});
    observer.observe(sentinel);
    wire();
    rerender();
    if (state.open !== null && state.open >= 0 && state.open < K) openDetail(state.open, false);
  }
  function setState(patch, fromUser) {
    var layerChanged = "layer" in patch && patch.layer !== state.layer;
    Object.keys(patch).forEach(function (k) { state[k] = patch[k]; });
    if (layerChanged) { state.open = null; build(); }
    else {
      document.getElementById("legend").innerHTML = legend();
      ["sort", "crit", "cls", "agree"].forEach(function (id) {
        var el = document.getElementById(id);
        if (el && String(el.value) !== String(state[id])) el.value = String(state[id]);
      });
      var q = document.getElementById("q");
      if (q.value !== state.q) q.value = state.q;
      rerender();
    }
    if (fromUser) announce(); else writeHash();
  }
  function wire() {
    var byId = function (id) { return document.getElementById(id); };
    if (byId("layer")) byId("layer").onchange = function () { setState({layer: parseInt(this.value, 10)}, true); };
    byId("sort").onchange = function () { setState({sort: this.value}, true); };
    byId("crit").onchange = function () { setState({crit: this.value}, true); };
    byId("cls").onchange = function () { setState({cls: parseInt(this.value, 10)}, true); };
    if (byId("agree")) byId("agree").onchange = function () { setState({agree: this.value}, true); };
    var timer = null;
    byId("q").oninput = function () {
      var v = this.value;
      clearTimeout(timer);
      timer = setTimeout(function () { setState({q: v}, true); }, 120);
    };
    byId("help").onclick = function () { byId("keys").hidden = false; byId("keys").querySelector("button").focus(); };
    byId("keys").onclick = function (e) { if (e.target === this || e.target.classList.contains("close")) this.hidden = true; };
    byId("legend").onclick = function (e) {
      var b = e.target.closest("button[data-cls]");
      if (!b) return;
      var c = parseInt(b.getAttribute("data-cls"), 10);
      setState({cls: state.cls === c ? -1 : c}, true);
    };
    grid.onclick = function (e) {
      var card = e.target.closest(".card");
      if (!card) return;
      focusPos = parseInt(card.getAttribute("data-pos"), 10);
      openDetail(parseInt(card.getAttribute("data-filter"), 10), true);
    };
    detail.onclick = function (e) {
      if (e.target === detail || e.target.closest(".close")) { closeDetail(); return; }
      var step = e.target.closest("[data-step]");
      if (step) { stepDetail(parseInt(step.getAttribute("data-step"), 10)); return; }
      var go = e.target.closest("[data-goto]");
      if (go) openDetail(parseInt(go.getAttribute("data-goto"), 10), true);
    };
    // a sprite sheet that fails to load is an error a reader (and the browser test) must see
    app.addEventListener("error", function (e) {
      if (e.target && e.target.tagName === "IMG") {
        e.target.classList.add("broken");
        console.error("csg atlas: image did not load: " + e.target.getAttribute("src"));
      }
    }, true);
  }
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    var typing = tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA";
    if (!detail.hidden) {
      if (e.key === "Escape") { e.preventDefault(); closeDetail(); }
      else if (e.key === "ArrowRight" && !typing) { e.preventDefault(); stepDetail(1); }
      else if (e.key === "ArrowLeft" && !typing) { e.preventDefault(); stepDetail(-1); }
      return;
    }
    if (e.key === "Escape") { document.getElementById("keys").hidden = true; return; }
    if (typing) return;
    if (e.key === "/") { e.preventDefault(); document.getElementById("q").focus(); return; }
    if (e.key === "?") { document.getElementById("help").click(); return; }
    if (e.key === "s") {
      var sel = document.getElementById("sort"), i = (sel.selectedIndex + 1) % sel.options.length;
      setState({sort: sel.options[i].value}, true);
      return;
    }
    var onCard = e.target.classList && e.target.classList.contains("card");
    var moves = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns(), Home: -1e9, End: 1e9};
    if (e.key in moves) {
      e.preventDefault();
      focusCard(onCard ? focusPos + moves[e.key] : (e.key === "End" ? order.length - 1 : 0));
    } else if ((e.key === "Enter" || e.key === " ") && onCard) {
      e.preventDefault();
      openDetail(parseInt(e.target.getAttribute("data-filter"), 10), true);
    }
  });
  window.addEventListener("message", function (e) {
    var m = e.data;
    if (!m || m.csgAtlas !== "set" || typeof m.state !== "object") return;
    var patch = {};
    ["sort", "crit", "agree", "q"].forEach(function (k) { if (typeof m.state[k] === "string") patch[k] = m.state[k]; });
    if (typeof m.state.cls === "number" && m.state.cls >= -1 && m.state.cls < C) patch.cls = m.state.cls;
    if (!sortAvailable(patch.sort || state.sort)) delete patch.sort;
    if (patch.crit && !U[patch.crit]) delete patch.crit;
    setState(patch, false);
  });

  readHash();
  build();
  document.body.setAttribute("data-first-cards-ms", (performance.now() - T0).toFixed(1));
  document.body.setAttribute("data-ready", "yes");
})();
