/* infogan-cells live explorer: the generator runs in the page (onnxruntime-web, WebAssembly).
 *
 * explorer/model.js sets window.INFOGAN_LIVE (the input layout and the ONNX model in base64);
 * explorer/ort/*.js set the runtime and its WebAssembly (see infogan_cells/report/live.py for why they
 * are scripts: a page opened from disk may not fetch). When anything is missing or fails, the
 * page keeps the pictures rendered in advance (explorer.js) and says why.
 *
 * The generator's input is laid out as infogan_cells.model.latent.to_input: noise z, one one-hot block
 * per categorical code, the continuous codes. z (and the categorical codes after the first)
 * come from the noise seed through a small seeded generator (mulberry32, Box-Muller), so a seed
 * always gives the same cell in this page; window.infoganLive.input() returns the input drawn.
 */
(function () {
  "use strict";
  var live = window.INFOGAN_LIVE;
  var lattice = window.INFOGAN_EXPLORER;
  var status = document.getElementById("live-status");
  var api = { ready: false, renders: 0, error: null };
  window.infoganLive = api;

  function fallback(reason) {
    api.error = reason;
    status.textContent = "The live generator could not start (" + reason + "); the pictures below were " +
      "rendered in advance.";
    document.getElementById("live").hidden = true;
    document.getElementById("lattice").hidden = false;
  }
  if (!live || !live.model) { fallback("explorer/model.js did not load"); return; }
  if (!window.ort) { fallback("onnxruntime-web (explorer/ort/ort.wasm.min.js) did not load"); return; }
  if (!window.INFOGAN_ORT_GLUE || !window.INFOGAN_ORT_WASM) { fallback("the runtime's WebAssembly did not load"); return; }

  function bytes(b64) {
    var s = atob(b64);
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { out[i] = s.charCodeAt(i); }
    return out;
  }

  // mulberry32: a small 32-bit generator; two uniforms per Box-Muller pair.
  function rng(seed) {
    var a = seed >>> 0;
    return function () {
      a = (a + 0x6D2B79F5) >>> 0;
      var t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  var select = document.getElementById("live-category");
  var seedInput = document.getElementById("live-seed");
  var canvas = document.getElementById("live-view");
  var ctx = canvas.getContext("2d");
  var sliders = [];
  for (var j = 0; j < live.n_continuous; j++) { sliders.push(document.getElementById("live-code-" + j)); }

  function input() {
    var x = new Float32Array(live.input_dim);
    var next = rng(Number(seedInput.value) || 0);
    var i;
    for (i = 0; i < live.z_dim; i += 2) {
      var u1 = Math.max(next(), 1e-12), u2 = next();
      var r = Math.sqrt(-2 * Math.log(u1));
      x[i] = r * Math.cos(2 * Math.PI * u2);
      if (i + 1 < live.z_dim) { x[i + 1] = r * Math.sin(2 * Math.PI * u2); }
    }
    var at = live.z_dim;
    live.categorical.forEach(function (k, c) {
      var value = c === 0 ? Number(select.value) : Math.floor(next() * k);
      x[at + value] = 1;
      at += k;
    });
    sliders.forEach(function (s, m) { x[at + m] = Number(s.value); });
    return x;
  }

  function draw(out) {
    var n = live.img_size, c = live.channels, plane = n * n;
    var image = ctx.createImageData(n, n);
    for (var p = 0; p < plane; p++) {
      for (var ch = 0; ch < 3; ch++) {
        // as infogan_cells.report.explorer.to_rgb: grey for one channel, red/green for two, the first three
        var src = c === 1 ? 0 : ch;
        var v = src < c ? out[src * plane + p] : -1;
        image.data[4 * p + ch] = Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5);
      }
      image.data[4 * p + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }

  var session = null, busy = null, again = false;
  function render() {
    if (!session) { return Promise.resolve(); }
    if (busy) { again = true; return busy; }
    var x = input();
    api.lastInput = Array.prototype.slice.call(x);
    sliders.forEach(function (s, m) {
      document.getElementById("live-code-" + m + "-value").textContent = "= " + Number(s.value).toFixed(2);
    });
    var feeds = {};
    feeds[live.input] = new window.ort.Tensor("float32", x, [1, live.input_dim]);
    busy = session.run(feeds).then(function (result) {
      draw(result[live.output].data);
      api.renders += 1;
      canvas.dataset.renders = String(api.renders);
    }).catch(function (err) {
      status.textContent = "The live generator failed: " + err;
      api.error = String(err);
    }).then(function () {
      busy = null;
      if (again) { again = false; return render(); }
    });
    return busy;
  }
  api.render = render;
  api.input = function () { return Array.prototype.slice.call(input()); };
  api.idle = function () { return busy ? busy.then(api.idle) : Promise.resolve(api.renders); };

  status.textContent = "Starting the generator…";
  var ort = window.ort;
  ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a file:// page lacks
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmBinary = bytes(window.INFOGAN_ORT_WASM);
  ort.env.wasm.wasmPaths = {
    mjs: URL.createObjectURL(new Blob([window.INFOGAN_ORT_GLUE], { type: "text/javascript" }))
  };
  ort.InferenceSession.create(bytes(live.model), { executionProviders: ["wasm"] }).then(function (s) {
    session = s;
    api.ready = true;
    document.getElementById("live").hidden = false;
    document.getElementById("lattice").hidden = true;
    status.textContent = "The generator runs in this page (onnxruntime-web " + live.ort_web + ", WebAssembly): " +
      "any setting, any noise seed.";
    sliders.forEach(function (s) { s.addEventListener("input", render); });
    seedInput.addEventListener("input", render);
    select.addEventListener("change", render);
    select.addEventListener("input", render);
    document.getElementById("live-random").addEventListener("click", function () {
      seedInput.value = String(Math.floor(Math.random() * 1000000));
      render();
    });
    return render();
  }).catch(function (err) { fallback(String(err && err.message ? err.message : err)); });
  if (lattice) { api.categories = lattice.categories.length; }
})();
