(function () {
  var box = document.getElementById('search');
  var out = document.getElementById('results');
  if (!box || !out) { return; }
  var entries = window.CLIPVIZ_INDEX || [];
  function cell(e) {
    var a = document.createElement('a');
    a.className = 'cell'; a.href = e.url;
    if (e.thumb) { var img = document.createElement('img'); img.src = e.thumb; img.alt = e.hook + ' #' + e.neuron;
      img.loading = 'lazy'; a.appendChild(img); }
    var t = document.createElement('div'); t.textContent = e.hook + ' #' + e.neuron; a.appendChild(t);
    var w = document.createElement('div'); w.className = 'words'; w.textContent = e.words.join(', ');
    a.appendChild(w);
    if (e.truth) { var g = document.createElement('div'); g.className = 'truth'; g.textContent = e.truth;
      a.appendChild(g); }
    return a;
  }
  function run() {
    var q = box.value.trim().toLowerCase();
    out.textContent = '';
    if (!q) { return; }
    var m = q.match(/^(.*?)[\s#:]*(\d+)$/);
    var hits = entries.filter(function (e) {
      if (m && String(e.neuron) === m[2] && e.hook.toLowerCase().indexOf(m[1].replace(/[\s#:]+$/, '')) >= 0) {
        return true;
      }
      if (e.truth && e.truth.toLowerCase().indexOf(q) >= 0) { return true; }
      return e.words.some(function (w) { return w.toLowerCase().indexOf(q) >= 0; });
    });
    var note = document.createElement('p');
    note.id = 'count';
    note.textContent = hits.length + ' neuron' + (hits.length === 1 ? '' : 's') + ' found' +
      (hits.length > 200 ? ' (first 200 shown)' : '');
    out.appendChild(note);
    var grid = document.createElement('div'); grid.className = 'grid';
    hits.slice(0, 200).forEach(function (e) { grid.appendChild(cell(e)); });
    out.appendChild(grid);
  }
  box.addEventListener('input', run);
  var params = new URLSearchParams(window.location.search);
  if (params.get('q')) { box.value = params.get('q'); run(); }
})();
