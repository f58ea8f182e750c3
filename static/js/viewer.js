/* The viewer: live conversion status, and a reader for the pages that are ready (page box, keyboard,
 * #page=N, zoom, text layer, find, outline, thumbnails, download, delete, the last page read). */
import { confirmAction } from './confirm.js';
import { Feed, watchNetwork } from './feed.js';
import { Find } from './find.js';
import { capitalize, clampPct, errorText, isDeleted, isTerminal, plural, progressLabel } from './format.js';
import { $, dataJson, errorMessage, request, sessionNotice } from './net.js';
import { PageColumn, ZOOM_STEPS } from './pages.js';
import { Sidebar } from './sidebar.js';

const SAVE_AFTER = 1500;  // ms of staying on a page before it is saved as the last page read

const pageFromHash = () => {
  const m = /^#page=(\d+)$/.exec(window.location.hash);
  return m ? Number(m[1]) : 0;
};

export function init(root) {
  const d = root.dataset;
  const el = {
    bar: $('#progress'), fill: $('#progress .progress-fill'), pct: $('#progress-percent'),
    stage: $('#stage'), pageCount: $('#page-count'), readyCount: $('#ready-count'), message: $('#message'),
    conn: $('#connection'), live: $('#live-region'), error: $('#error'), errorMsg: $('#error-message'),
    retryForm: $('#retry-form'), notice: $('#notice'), toolbar: $('#toolbar'), pageBox: $('#page-number'),
    pageOf: $('#page-of'), pageLive: $('#page-live'), zoom: $('#zoom'), zoomCustom: $('#zoom-custom'),
    totalLine: $('#page-total-line'),
  };
  let state = dataJson(root, 'progress', null);
  if (!state || typeof state.seq !== 'number') {
    state = { seq: Number(d.seq) || 0, state: d.state, stage: d.state, percent: 0, page: 0, pages: 0, ready: 0 };
  }
  const layout = dataJson(root, 'layout', {});
  let feed = null;
  let gone = false;

  root.classList.add('enhanced');
  el.toolbar.hidden = false;
  history.scrollRestoration = 'manual';  // the viewer restores the reading place itself
  // Pages scrolled to sit just below the sticky toolbar, whatever its height (it wraps on phones).
  const toolbarHeight = () => root.style.setProperty('--toolbar-h', el.toolbar.offsetHeight + 'px');
  toolbarHeight();
  new ResizeObserver(toolbarHeight).observe(el.toolbar);

  const announce = (text) => { el.live.textContent = text; };

  /* ---- status ---- */
  function showError(message, retryable) {
    el.error.hidden = false;
    el.errorMsg.textContent = message || 'The conversion failed.';
    let btn = $('#retry');
    if (retryable && !btn) {
      btn = document.createElement('button');
      btn.id = 'retry'; btn.type = 'submit'; btn.textContent = 'Try again';
      el.retryForm.appendChild(btn);
    } else if (!retryable && btn) {
      btn.remove();
    }
  }

  function render(p, prev, quiet) {
    const pct = clampPct(p.percent);
    el.fill.style.width = pct + '%';  // CSSOM, which the CSP allows (unlike style="" attributes)
    el.bar.setAttribute('aria-valuenow', String(pct));
    el.bar.setAttribute('aria-valuetext', progressLabel(p));
    el.pct.textContent = pct + '%';
    el.stage.textContent = capitalize(p.stage);
    el.pageCount.textContent = p.pages ? 'page ' + p.page + ' of ' + p.pages : '';
    el.readyCount.textContent = p.pages && p.state !== 'complete'
      ? (p.ready || 0) + ' of ' + p.pages + ' pages ready to read' : '';
    el.message.textContent = p.state === 'failed' ? '' : p.message || '';  // #error says it
    root.dataset.seq = String(p.seq);
    root.dataset.state = p.state;
    if (p.state === 'failed') {
      showError(errorText(p), !!(p.error && p.error.retryable));
    } else {
      el.error.hidden = true;
      const btn = $('#retry');
      if (btn) btn.remove();
    }
    // Announce what changed in kind, not every percent.
    if (quiet) return;
    if (p.state === 'complete') {
      announce('Conversion complete, ' + plural(p.pages, 'page'));
    } else if (p.state === 'failed') {
      announce('Conversion failed: ' + errorText(p));
    } else if (!prev || p.state !== prev.state || p.stage !== prev.stage) {
      announce(capitalize(p.stage) + (p.message ? ': ' + p.message : ''));
    } else if ((prev.ready || 0) === 0 && p.ready > 0) {
      announce('Page 1 is ready to read.');
    }
  }

  function onState(id, p) {
    const prev = state;
    state = p;
    if (isDeleted(p)) { deleted(); return; }
    render(p, prev);
    syncPages(p);
    if (p.state !== prev.state) watchQueue();
  }

  /* ---- the queue notice: the place among the documents that start before this one ---- */
  // Asked of the server while the document waits (the place moves as others start, and the progress
  // stream says nothing until this one does); hidden as soon as the conversion starts.
  const QUEUE_POLL = 2000;
  const queueNotice = $('#queue-notice');
  let queueTimer = null;

  function queueText(q) {
    if (!q) return '';
    if (q.workers === 0) return 'No conversion worker is running. The document will be converted when one starts.';
    const workers = plural(q.workers, 'worker') + ' converting.';
    if (q.position === 1) return 'Next in the queue — ' + workers;
    if (q.position > 1) {
      return 'Place in the queue: ' + q.position + ' — ' + plural(q.position - 1, 'document') + ' ahead of yours, '
        + workers;
    }
    return '';
  }

  function showQueue(q) {
    if (!queueNotice) return;
    const text = state.state === 'queued' && !gone ? queueText(q) : '';
    if (queueNotice.textContent !== text) queueNotice.textContent = text;
    queueNotice.hidden = !text;
    queueNotice.dataset.workers = q ? String(q.workers) : '';
    queueNotice.dataset.position = q && q.position ? String(q.position) : '';
  }

  function watchQueue() {
    clearTimeout(queueTimer);
    queueTimer = null;
    if (gone || state.state !== 'queued') { showQueue(null); return; }
    queueTimer = setTimeout(() => {
      request(d.docUrl).then((r) => {
        if (r.status === 401) { sessionExpired(); return; }
        if (r.status === 404) { deleted(); return; }
        const p = r.status === 200 && r.data && r.data.progress;
        if (p && p.seq > state.seq) onState(d.docId, p);  // started meanwhile: the notice goes
        if (p && state.state === 'queued') showQueue(r.data.queue || null);
        if (state.state === 'queued' && !gone) watchQueue();
      });
    }, QUEUE_POLL);
  }

  /* ---- the reader ---- */
  const pages = new PageColumn($('#pages'), { dpi: d.renderDpi, hd: d.hd === 'on', toolbar: el.toolbar, onCurrent,
                                              onMissing: recheck });
  const sidebar = new Sidebar($('#sidebar'), { toggle: $('#sidebar-toggle') });
  sidebar.setOutline(layout.outline || []);
  let layoutAttempt = null;
  let fetching = false;

  function applyLayout(filesUrl, sizes, outline) {
    pages.setLayout(filesUrl, sizes, state.ready || 0);
    sidebar.setPages(filesUrl, sizes);
    sidebar.setReady(state.ready || 0);
    if (outline) sidebar.setOutline(outline);
    const n = sizes.length;
    el.pageOf.textContent = 'of ' + (n || '…');
    el.totalLine.textContent = n ? ' · ' + plural(n, 'page') : '';
    el.pageBox.value = String(pages.current);
  }

  // The layout (sizes, files) comes with the page; a new attempt, or one not checked yet when the
  // page was served, fetches it once it exists. Ready pages are then filled in as events say so.
  function syncPages(p) {
    if (p.attempt === layoutAttempt) {
      pages.setReady(p.ready || 0);
      sidebar.setReady(p.ready || 0);
      return;
    }
    if (layoutAttempt !== null) {
      // Another attempt. It keeps the pages stored before it (p.ready of them): those stay shown
      // while its layout is fetched; an attempt that kept none starts the pages afresh.
      layoutAttempt = null;
      if (!(p.ready > 0)) {
        pages.clear();
        sidebar.setPages(null, pages.sizes);
      }
    }
    if (fetching || !(p.pages > 0 || p.ready > 0 || p.state === 'complete')) return;
    fetching = true;
    request(d.docUrl).then((r) => {
      fetching = false;
      if (r.status === 401) { sessionExpired(); return; }
      if (r.status !== 200 || !r.data || !r.data.files_url || gone) return;
      if (r.data.progress.attempt !== state.attempt) { syncPages(state); return; }
      layoutAttempt = state.attempt;
      applyLayout(r.data.files_url, r.data.sizes || [], r.data.outline || []);
    });
  }

  // A page file that should be there is not: ask the document once (a viewer of a finished document
  // has no open stream that could have said it was deleted or retried).
  let rechecking = false;
  function recheck() {
    if (rechecking || gone) return;
    rechecking = true;
    request(d.docUrl).then((r) => {
      rechecking = false;
      const p = r.status === 200 && r.data && r.data.progress;
      if (r.status === 404) deleted();
      else if (p && p.seq > state.seq) onState(d.docId, p);
    });
  }

  function onCurrent(n, jumped) {
    el.pageBox.value = String(n);
    sidebar.setCurrent(n);
    if (jumped) el.pageLive.textContent = 'Page ' + n + ' of ' + pages.count;
    history.replaceState(history.state, '', '#page=' + n);
    savePosition(n);
  }

  function go(n) { if (pages.count) pages.goTo(n); }

  // The number box: Enter (or leaving it changed) jumps; nonsense is put back.
  function jumpFromBox() {
    const n = Number(el.pageBox.value.trim());
    if (Number.isInteger(n) && n >= 1 && n <= pages.count) {
      go(n);
    } else {
      el.pageBox.value = String(pages.current);
      el.pageLive.textContent = 'Enter a page number from 1 to ' + pages.count;
    }
  }
  el.pageBox.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); jumpFromBox(); } });
  el.pageBox.addEventListener('change', jumpFromBox);
  el.pageBox.addEventListener('focus', () => el.pageBox.select());
  $('#prev-page').addEventListener('click', () => go(pages.current - 1));
  $('#next-page').addEventListener('click', () => go(pages.current + 1));

  /* ---- zoom ---- */
  function setZoom(value) {
    pages.setZoom(value);
    const v = String(pages.zoom);
    const option = Array.from(el.zoom.options).find((o) => o.value === v && !o.disabled);
    if (option) {
      el.zoom.value = v;
      el.zoomCustom.hidden = true;
    } else {
      el.zoomCustom.textContent = Math.round(pages.factor * 100) + '%';
      el.zoomCustom.hidden = false;
      el.zoomCustom.selected = true;
    }
  }

  function zoomStep(dir) {
    const f = pages.factor;
    const next = dir > 0 ? ZOOM_STEPS.find((z) => z > f + 0.001)
      : ZOOM_STEPS.slice().reverse().find((z) => z < f - 0.001);
    setZoom(next || (dir > 0 ? ZOOM_STEPS[ZOOM_STEPS.length - 1] : ZOOM_STEPS[0]));
  }

  el.zoom.addEventListener('change', () => {
    const v = el.zoom.value;
    setZoom(/^[\d.]+$/.test(v) ? Number(v) : v);
  });
  $('#zoom-in').addEventListener('click', () => zoomStep(1));
  $('#zoom-out').addEventListener('click', () => zoomStep(-1));

  // Ctrl +/−/0 zoom the document, not the browser; PgUp/PgDn/Home/End move through the pages.
  document.addEventListener('keydown', (ev) => {
    if (ev.defaultPrevented || gone) return;
    if ((ev.ctrlKey || ev.metaKey) && !ev.altKey) {
      if (ev.key === '+' || ev.key === '=') zoomStep(1);
      else if (ev.key === '-') zoomStep(-1);
      else if (ev.key === '0') setZoom('auto');
      else return;
      ev.preventDefault();
      return;
    }
    if (ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    if (ev.target.closest && ev.target.closest('input, select, textarea, [contenteditable], dialog')) return;
    const moves = {
      PageDown: () => pages.overflow(1) || go(pages.current + 1),
      PageUp: () => pages.overflow(-1) || go(pages.current - 1),
      Home: () => go(1),
      End: () => go(pages.count),
    };
    if (!moves[ev.key] || !pages.count) return;
    ev.preventDefault();
    moves[ev.key]();
  });

  // Links to pages (outline, thumbnails): jump here, so the same link works twice in a row.
  root.addEventListener('click', (ev) => {
    const a = ev.target.closest && ev.target.closest('a[href^="#page="]');
    if (!a || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    const overlay = sidebar.overlay;
    go(Number(a.getAttribute('href').slice(6)));
    sidebar.chosen();
    if (overlay) pages.figs[pages.current - 1].focus({ preventScroll: true });
  });
  window.addEventListener('hashchange', () => { const n = pageFromHash(); if (n) go(n); });

  /* ---- find ---- */
  const find = new Find({
    form: $('#find-form'), searchUrl: d.searchUrl, pages, sidebar,
    ready: () => state.ready || 0, total: () => state.pages || pages.count,
    converting: () => !isTerminal(state),
    onJump: (n, y) => pages.reveal(n, y),
    onAuthLost: sessionExpired,
  });

  /* ---- the last page read, saved on the server ---- */
  let saved = Number(d.lastPage) || 1;
  let saveTimer = null;
  let unsaved = 0;
  function savePosition(n) {
    unsaved = n;
    clearTimeout(saveTimer);
    saveTimer = setTimeout(flushPosition, SAVE_AFTER);
  }
  function flushPosition(keepalive) {
    clearTimeout(saveTimer);
    if (!unsaved || unsaved === saved || gone) return;
    const n = unsaved;
    saved = n;
    request(d.positionUrl, { method: 'PUT', json: { page: n }, keepalive: !!keepalive }).then((r) => {
      if (r.status !== 204 && saved === n) saved = 0;  // try again on the next move
    });
  }
  window.addEventListener('pagehide', () => flushPosition(true));

  /* ---- download, delete ---- */
  function deleted() {
    if (gone) return;
    gone = true;
    if (feed) feed.stop();
    pages.clear();
    ['#status', '#toolbar', '#viewer-body', '.doc-tools'].forEach((s) => { $(s, root).hidden = true; });
    document.body.classList.remove('sidebar-open');
    $('#deleted').hidden = false;  // role="alert": read out at once
    el.conn.dataset.state = 'offline';
    el.conn.textContent = 'Deleted';
    history.replaceState(history.state, '', window.location.pathname);
  }

  $('#delete-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('h1', root).textContent;
    confirmAction({ title: 'Delete ' + name + '?', confirm: 'Delete',
                    text: 'The document, its pages and its text are removed for good.' }).then((yes) => {
      if (!yes) return;
      request(d.docUrl, { method: 'DELETE' }).then((r) => {
        if (r.status === 204 || r.status === 404) { gone = true; window.location.assign(d.listUrl); return; }
        if (r.status === 401) { sessionExpired(); return; }
        announce(errorMessage(r, 'The document could not be deleted; try again.'));
      });
    });
  });

  /* ---- the live feed ---- */
  function setConnection(s, text) {
    if (gone) return;
    el.conn.dataset.state = s;
    el.conn.textContent = text;
  }

  function sessionExpired() {
    sessionNotice(el.notice, d.loginUrl);
    announce('Session expired. Log in again to see progress.');
  }

  function startFeed() {
    if (feed) feed.stop();
    feed = new Feed({
      settings: dataJson(root, 'realtime', { mode: d.mode }),
      docs: [[d.docId, state]], wsUrl: d.wsUrl, sseUrl: () => d.eventsUrl, statusUrl: d.statusUrl,
      onState, onConnection: setConnection, onAuthLost: sessionExpired,
      onGone: () => announce('This document is no longer available.'),
    });
    feed.start();
  }

  // Retry with fetch; the same form still works without script.
  el.retryForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const btn = $('#retry');
    if (!btn || btn.disabled) return;
    btn.disabled = true;
    request(d.retryUrl, { method: 'POST' }).then((r) => {
      btn.disabled = false;
      if (r.status === 202 && r.data && r.data.progress) {
        const p = r.data.progress;
        if (p.seq > state.seq) onState(d.docId, p);  // reset the UI to the new, queued attempt
        $('#status-heading').focus();       // the button just vanished: keep keyboard users in place
        startFeed();
        return;
      }
      if (r.status === 401) { sessionExpired(); return; }
      el.errorMsg.textContent = errorMessage(r, 'The retry could not be started; try again in a moment.');
      announce(el.errorMsg.textContent);
    });
  });

  /* ---- start ---- */
  render(state, state, true);  // the exact width over the server's 10% step; nothing to announce
  if (isDeleted(state)) {
    deleted();
  } else {
    if (layout.files_url && (layout.sizes || []).length) {
      layoutAttempt = layout.attempt;
      applyLayout(layout.files_url, layout.sizes, null);
    } else {
      pages.setZoom('auto');
    }
    syncPages(state);
    const start = pageFromHash() || saved;
    if (start > 1) go(start);
    if (!isTerminal(state)) startFeed();
    watchQueue();
  }
  watchNetwork(() => feed, setConnection);
  window.livedoc = {
    state: () => Object.assign({}, state),
    mode: () => (feed ? feed.mode : null),
    connection: () => el.conn.dataset.state,
    page: () => pages.current,
    zoom: () => pages.factor,
    livePages: () => Array.from(pages.live).sort((a, b) => a - b),
    find,
  };
}
