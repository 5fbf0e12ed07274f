/* infogan-cells cell explorer.
 *
 * The images were generated in advance (see infogan_cells/report/explorer.py); explorer/index.js sets
 * window.INFOGAN_EXPLORER, the lattice's index. This script only picks a tile of a category's
 * sprite sheet and shows it with CSS background-position. No network access, no fetch(), so it
 * works from file://.
 */
(function () {
  "use strict";
  var data = window.INFOGAN_EXPLORER;
  var status = document.getElementById("status");
  if (!data) {
    status.textContent = "The explorer's data (explorer/index.js) did not load.";
    return;
  }
  var view = document.getElementById("view");
  var select = document.getElementById("category");
  var seedSlider = document.getElementById("seed");
  var sliders = data.codes.map(function (c) { return document.getElementById("code-" + c.index); });
  var centre = Math.floor((data.n_steps - 1) / 2);
  var active = 0; // "axes" mode: the code the user moved last; the others are held at 0
  var loaded = {};

  function checkSprite(cat) {
    // The sheet is shown as a CSS background, which reports no errors; an Image does.
    if (loaded[cat.sprite] !== undefined) { return; }
    loaded[cat.sprite] = false;
    var img = new Image();
    img.onload = function () { loaded[cat.sprite] = true; };
    img.onerror = function () { status.textContent = "Could not load " + cat.sprite + "."; };
    img.src = cat.sprite;
  }

  function point() {
    if (data.mode === "axes") {
      return sliders.length ? active * data.n_steps + Number(sliders[active].value) : 0;
    }
    var p = 0;
    sliders.forEach(function (s) { p = p * data.n_steps + Number(s.value); });
    return p;
  }

  function place(el, cat, tile, size) {
    var scale = size / data.tile;
    var col = tile % data.cols;
    var row = Math.floor(tile / data.cols);
    el.style.backgroundImage = 'url("' + cat.sprite + '")';
    el.style.backgroundSize = (data.cols * data.tile * scale) + "px " + (data.rows * data.tile * scale) + "px";
    el.style.backgroundPosition = (-col * data.tile * scale) + "px " + (-row * data.tile * scale) + "px";
  }

  function codeValue(i) {
    if (data.mode === "axes" && i !== active) { return 0; }
    return data.steps[Number(sliders[i].value)];
  }

  function render() {
    var k = Number(select.value);
    var cat = data.categories[k];
    var tile = Number(seedSlider.value) * data.n_points + point();
    checkSprite(cat);
    place(view, cat, tile, view.clientWidth || 256);
    view.dataset.category = String(k);
    view.dataset.tile = String(tile);
    view.setAttribute("aria-label", "generated cell, " + cat.name);
    data.codes.forEach(function (c, i) {
      var box = document.getElementById("code-" + c.index + "-box");
      box.classList.toggle("held", data.mode === "axes" && i !== active);
      document.getElementById("code-" + c.index + "-value").textContent = "= " + codeValue(i).toFixed(2);
    });
    document.getElementById("seed-value").textContent = String(data.seeds[Number(seedSlider.value)]);
    var buttons = document.querySelectorAll("#strip button");
    Array.prototype.forEach.call(buttons, function (b) {
      var other = data.categories[Number(b.dataset.category)];
      place(b.querySelector(".tile"), other, tile, 64);
      b.classList.toggle("current", other.index === k);
    });
  }

  sliders.forEach(function (s, i) {
    s.addEventListener("input", function () {
      if (data.mode === "axes" && i !== active) {
        sliders.forEach(function (o, m) { if (m !== i) { o.value = String(centre); } });
        active = i;
      }
      render();
    });
  });
  seedSlider.addEventListener("input", render);
  select.addEventListener("input", render);
  select.addEventListener("change", render);
  Array.prototype.forEach.call(document.querySelectorAll("#strip button"), function (b) {
    b.addEventListener("click", function () {
      select.value = b.dataset.category;
      render();
    });
  });
  render();
})();
