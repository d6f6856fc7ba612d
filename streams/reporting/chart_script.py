"""The page's only script: it draws every chart from the JSON the page carries, as inline SVG.

Hand-written and self-contained on purpose: the report must open on a machine with no network, so
no chart library and no CDN. Two chart kinds: ``line`` (series over time) and ``bars`` (grouped or
stacked). Every drawn mark carries ``data-mark`` and a ``<title>`` with the exact value; when all
charts are drawn the body gets ``data-charts-drawn``, or ``data-chart-error`` if one failed (the
headless-browser test reads both).
"""

SCRIPT = r"""
(function () {
  "use strict";
  var PALETTE = ["#2f6fb0", "#e07b39", "#3a9e6a", "#b8434a", "#7a5cb0", "#8c6d31", "#d163a8", "#5f6b73"];
  var W = 760, H = 280, M = {top: 16, right: 16, bottom: 64, left: 96};
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function short(v) {
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    if (a > 0 && a < 1) return v.toPrecision(2);
    return String(Math.round(v * 100) / 100);
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  function axes(max, labels, xAt) {
    var out = [], plotH = H - M.top - M.bottom, every = Math.max(1, Math.ceil(labels.length / 12));
    for (var i = 0; i <= 4; i++) {
      var y = M.top + plotH - plotH * i / 4;
      out.push('<line class="grid" x1="' + M.left + '" x2="' + (W - M.right) + '" y1="' + y + '" y2="' + y + '"/>');
      out.push('<text class="tick" x="' + (M.left - 6) + '" y="' + (y + 4) + '" text-anchor="end">' +
               esc(short(max * i / 4)) + '</text>');
    }
    labels.forEach(function (label, i) {
      if (i % every) return;
      var x = xAt(i), text = label.length > 18 ? label.slice(0, 17) + "\u2026" : label;
      out.push('<text class="tick" transform="translate(' + x + ',' + (H - M.bottom + 14) + ') rotate(-25)" ' +
               'text-anchor="end"><title>' + esc(label) + '</title>' + esc(text) + '</text>');
    });
    return out.join("");
  }
  function legend(series) {
    return '<div class="legend">' + series.map(function (s, i) {
      return '<span><i style="background:' + PALETTE[i % PALETTE.length] + '"></i>' + esc(s.name) + '</span>';
    }).join("") + '</div>';
  }
  function line(c) {
    var n = c.x.length, plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    var max = niceMax(Math.max.apply(null, [0].concat.apply([], c.series.map(function (s) { return s.values; }))));
    function xAt(i) { return M.left + (n <= 1 ? plotW / 2 : plotW * i / (n - 1)); }
    function yAt(v) { return M.top + plotH - plotH * v / max; }
    var marks = c.series.map(function (s, k) {
      var colour = PALETTE[k % PALETTE.length];
      var pts = s.values.map(function (v, i) { return xAt(i).toFixed(1) + "," + yAt(v).toFixed(1); }).join(" ");
      var dots = s.values.map(function (v, i) {
        return '<circle data-mark r="3" cx="' + xAt(i).toFixed(1) + '" cy="' + yAt(v).toFixed(1) + '" fill="' + colour +
               '"><title>' + esc(s.name + " · " + c.x[i] + ": " + s.exact[i]) + '</title></circle>';
      }).join("");
      return '<polyline data-mark fill="none" stroke-width="2" stroke="' + colour + '" points="' + pts + '"/>' + dots;
    }).join("");
    return '<svg viewBox="0 0 ' + W + ' ' + H + '" role="img">' + axes(max, c.x, xAt) + marks + '</svg>' +
           legend(c.series);
  }
  function bars(c) {
    var n = c.x.length, plotW = W - M.left - M.right, plotH = H - M.top - M.bottom, k = c.series.length;
    var totals = c.x.map(function (_, i) {
      return c.stacked ? c.series.reduce(function (a, s) { return a + Math.max(0, s.values[i]); }, 0)
                       : Math.max.apply(null, c.series.map(function (s) { return s.values[i]; }));
    });
    var max = niceMax(Math.max.apply(null, [0].concat(totals)));
    var band = plotW / Math.max(n, 1), inner = band * 0.8, bw = c.stacked ? inner : inner / k;
    function xAt(i) { return M.left + band * i + band / 2; }
    var marks = [];
    c.x.forEach(function (label, i) {
      var base = 0;
      c.series.forEach(function (s, j) {
        var v = Math.max(0, s.values[i]), h = plotH * v / max;
        var x = M.left + band * i + (band - inner) / 2 + (c.stacked ? 0 : bw * j);
        var y = M.top + plotH - h - (c.stacked ? plotH * base / max : 0);
        if (c.stacked) base += v;
        marks.push('<rect data-mark x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" width="' +
                   Math.max(1, bw - 1).toFixed(1) + '" height="' + Math.max(v > 0 ? 1 : 0, h).toFixed(1) +
                   '" fill="' + PALETTE[j % PALETTE.length] + '"><title>' +
                   esc(s.name + " · " + label + ": " + s.exact[i]) + '</title></rect>');
      });
    });
    return '<svg viewBox="0 0 ' + W + ' ' + H + '" role="img">' + axes(max, c.x, xAt) + marks.join("") + '</svg>' +
           legend(c.series);
  }
  var drawn = 0;
  try {
    var charts = JSON.parse(document.getElementById("chart-data").textContent);
    charts.forEach(function (c) {
      var box = document.querySelector('[data-chart="' + c.id + '"] .plot');
      if (!c.x.length) {
        box.innerHTML = '<p class="empty">No data in this window.</p>';
      } else {
        box.innerHTML = c.kind === "line" ? line(c) : bars(c);
      }
      drawn += 1;
    });
    document.body.setAttribute("data-charts-drawn", String(drawn));
  } catch (e) {
    document.body.setAttribute("data-chart-error", String(e && e.message || e));
  }
})();
"""
