/* "My documents": every row live over one connection; uploads join it without a reload; delete. */
import { confirmAction } from './confirm.js';
import { Feed, watchNetwork } from './feed.js';
import { capitalize, clampPct, errorText, fileSize, isDeleted, isTerminal, plural, stageLabel } from './format.js';
import { $, $$, dataJson, errorMessage, request, sessionNotice, withQuery } from './net.js';

export function init(root) {
  const d = root.dataset;
  const tbody = $('#doc-list tbody', root);
  const form = $('#upload-form', root);
  const live = $('#list-live', root);
  const connEl = $('#connection', root);

  // One line per announcement (not one replaced text), so two completions in a row both get read.
  function announce(text) {
    const line = document.createElement('p');
    line.textContent = text;
    live.appendChild(line);
    while (live.childNodes.length > 5) live.removeChild(live.firstChild);
  }

  function setConnection(s, text) { connEl.dataset.state = s; connEl.textContent = text; }

  const rowOf = (id) => tbody.querySelector('tr[data-doc-id="' + id + '"]');
  const nameOf = (tr) => $('.doc-link', tr).textContent;

  function render(tr, p) {
    const pct = clampPct(p.percent);
    tr.dataset.seq = String(p.seq);
    tr.dataset.state = p.state;
    const badge = $('.doc-state', tr);
    badge.textContent = p.state;
    badge.dataset.state = p.state;
    // The badge says the state; the stage adds what it is doing (not "queued" twice).
    const doing = p.stage && p.stage !== p.state ? stageLabel(p) : '';
    $('.doc-stage', tr).textContent = p.state === 'failed' ? errorText(p) : p.state === 'complete' ? '' : doing;
    const bar = $('[role="progressbar"]', tr);
    bar.setAttribute('aria-valuenow', String(pct));
    bar.setAttribute('aria-valuetext', isTerminal(p) ? capitalize(p.state)
      : (doing || capitalize(p.state)) + ', ' + pct + '%');
    $('.progress-fill', bar).style.width = pct + '%';
    $('.doc-percent', tr).textContent = pct + '%';
  }

  // A row leaves the list; focus, if it was in the row, moves to a neighbour rather than to nowhere.
  function removeRow(tr) {
    if (!tr.isConnected) return;  // the stream's "deleted" event and our own DELETE both get here
    const hadFocus = tr.contains(document.activeElement);
    const next = tr.nextElementSibling || tr.previousElementSibling;
    tr.remove();
    if (hadFocus) (next ? $('.doc-link', next) : $('#docs-heading', root)).focus();
    if (!tbody.querySelector('tr[data-doc-id]') && !$('#no-docs', root)) {
      const empty = document.createElement('p');
      empty.id = 'no-docs'; empty.className = 'muted empty';
      empty.textContent = 'No documents yet. Upload one above.';
      $('.table-wrap', root).after(empty);
    }
  }

  function onState(id, p) {
    const tr = rowOf(id);
    if (!tr) return;
    if (isDeleted(p)) {  // deleted here, or elsewhere (another tab, the API)
      announce(nameOf(tr) + ' deleted.');
      removeRow(tr);
      return;
    }
    render(tr, p);
    if (p.state === 'complete') {
      announce(nameOf(tr) + ': conversion complete' + (p.pages ? ', ' + plural(p.pages, 'page') : ''));
    } else if (p.state === 'failed') {
      announce(nameOf(tr) + ': conversion failed: ' + errorText(p));
    }
  }

  // A new row from the server-rendered <template>: the markup lives in one place.
  function addRow(doc) {
    const tr = $('#doc-row-template').content.firstElementChild.cloneNode(true);
    const iso = String(doc.created_at || '').replace(/\.\d+/, '');
    tr.dataset.docId = doc.id;
    const link = $('.doc-link', tr);
    link.href = doc.viewer_url; link.textContent = doc.filename;
    $('[role="progressbar"]', tr).setAttribute('aria-label', 'Progress of ' + doc.filename);
    $('.doc-kind', tr).textContent = String(doc.kind || '').toUpperCase();
    $('.doc-size', tr).textContent = fileSize(Number(doc.size) || 0);
    $('.delete-form', tr).action = doc.viewer_url + '/delete';
    $('.delete-form button', tr).setAttribute('aria-label', 'Delete ' + doc.filename);
    const time = $('time', tr);
    time.setAttribute('datetime', iso);
    time.textContent = iso.slice(0, 10) + ' ' + iso.slice(11, 16);
    render(tr, doc.progress);
    tbody.insertBefore(tr, tbody.firstChild);
    const empty = $('#no-docs', root);
    if (empty) empty.remove();
  }

  const rows = $$('tr[data-doc-id]', tbody);
  const feed = new Feed({
    settings: dataJson(root, 'realtime', { mode: d.mode }),
    docs: rows.map((tr) => [tr.dataset.docId, { seq: Number(tr.dataset.seq) || 0, state: tr.dataset.state }]),
    wsUrl: d.wsUrl,
    sseUrl: (ids, cursor) => withQuery(d.eventsUrl, 'docs=' + ids.map(encodeURIComponent).join(',') +
      (cursor ? '&cursor=' + encodeURIComponent(cursor) : '')),
    listUrl: d.listUrl,
    minPoll: 1000,
    onState, onConnection: setConnection,
    onAuthLost: () => {
      sessionNotice($('#notice', root), d.loginUrl);
      announce('Session expired. Log in again to see progress.');
    },
    onGone: () => {},
  });

  // ---- delete: confirm in the dialog, then DELETE; the row goes, the others stay live
  tbody.addEventListener('submit', (ev) => {
    const del = ev.target.closest('.delete-form');
    if (!del) return;
    ev.preventDefault();
    const tr = del.closest('tr');
    const name = nameOf(tr);
    confirmAction({ title: 'Delete ' + name + '?', confirm: 'Delete',
                    text: 'The document, its pages and its text are removed for good.' }).then((yes) => {
      if (!yes) return;
      request(d.docApi + tr.dataset.docId, { method: 'DELETE' }).then((r) => {
        if (r.status === 204 || r.status === 404) {
          if (tr.isConnected) announce(name + ' deleted.');
          removeRow(tr);
        } else if (r.status === 401) {
          feed.o.onAuthLost();
        } else {
          announce(errorMessage(r, 'The document could not be deleted; try again.'));
        }
      });
    });
  });

  // ---- the upload form, sent with fetch; without script (or on a network error) it posts itself
  const fileInput = $('#file', form);
  const button = $('button[type="submit"]', form);

  function showUploadError(text) {
    let box = $('#upload-error', root);
    if (!box) {
      box = document.createElement('p');
      box.id = 'upload-error'; box.className = 'error-box'; box.setAttribute('role', 'alert');
      form.parentNode.insertBefore(box, form);
      fileInput.setAttribute('aria-describedby', 'file-help upload-error');
    }
    box.textContent = text;
    box.hidden = false;
  }

  function clearUploadError() {
    const box = $('#upload-error', root);
    if (box) box.hidden = true;
    fileInput.setAttribute('aria-describedby', 'file-help');
  }

  form.addEventListener('submit', (ev) => {
    if (!window.fetch || !window.FormData) return;  // the browser posts the form itself
    ev.preventDefault();
    if (button.disabled) return;
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    request(d.listUrl, { method: 'POST', body: new FormData(form) }).then((r) => {
      button.disabled = false;
      button.removeAttribute('aria-busy');
      if (r.status === 201 && r.data && r.data.id && r.data.progress) {
        clearUploadError();
        form.reset();
        if (!rowOf(r.data.id)) addRow(r.data);
        announce(r.data.filename + ' uploaded; converting.');
        feed.add(r.data.id, r.data.progress);
        return;
      }
      if (r.status === 0) { form.submit(); return; }  // no answer at all: the plain form may still get through
      if (r.status === 401) { feed.o.onAuthLost(); return; }
      showUploadError(errorMessage(r, r.status === 429
        ? 'Too many uploads; try again in a minute.' : 'The upload failed; try again.'));
    });
  });

  if (feed.open.size) feed.start();
  else setConnection('offline', 'Up to date');
  watchNetwork(() => feed, setConnection);
  window.livedoc = {
    mode: () => feed.mode,
    connection: () => connEl.dataset.state,
    watching: () => Array.from(feed.open),
  };
}
