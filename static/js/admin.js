/* Admin: the connection stats of every web host, refreshed every 3 s. */
import { $, make, request } from './net.js';

const REFRESH = 3000;

// Rebuild a tbody from rows of values; ids in the first column are shown as code.
function fill(tbody, rows, columns, code, empty) {
  tbody.textContent = '';
  rows.forEach((values) => {
    const tr = tbody.appendChild(document.createElement('tr'));
    values.forEach((v, i) => {
      tr.appendChild(document.createElement('td')).appendChild(make(i === 0 && code ? 'code' : 'span', '', v));
    });
  });
  if (!rows.length) {
    const td = tbody.appendChild(document.createElement('tr')).appendChild(make('td', 'muted', empty));
    td.colSpan = columns;
  }
}

const sorted = (obj) => Object.keys(obj || {}).sort().map((k) => [k, obj[k]]);

export function init(box) {
  function show(s) {
    const values = { totalConnections: s.totalConnections, documentSubscriptions: s.documentSubscriptions,
                     hostCount: (s.hosts || []).length };
    box.querySelectorAll('[data-stat]').forEach((dd) => { dd.textContent = String(values[dd.dataset.stat]); });
    fill($('[data-map="connectionsByTransport"]', box), sorted(s.connectionsByTransport), 2, false, 'None');
    fill($('[data-map="connectionsByDocument"]', box), sorted(s.connectionsByDocument), 2, true, 'None');
    fill($('[data-hosts]', box), (s.hosts || []).map((h) => [h.host, h.totalConnections,
      h.documentSubscriptions, h.watchedJobs]), 4, true, 'No web process has reported yet.');
  }

  function tick() {
    request(box.dataset.statsUrl).then((r) => {
      const note = $('#stats-updated');
      if (r.status === 401 || r.status === 403) { note.textContent = 'Not allowed to read stats'; return; }
      if (r.status === 200 && r.data) {
        show(r.data);
        note.textContent = 'All web hosts · updated ' + new Date().toLocaleTimeString();
      } else {
        note.textContent = 'Stats unavailable; retrying';
      }
      setTimeout(tick, REFRESH);
    });
  }
  setTimeout(tick, REFRESH);
}
