/* livedoc client: live conversion progress in the viewer, state refresh on the list, admin stats.
 *
 * One small file, no build step, no libraries. The CSP forbids inline script, so pages hand their
 * data over in data-* attributes. The viewer is server-rendered: this script only keeps it current.
 */
(function () {
  'use strict';

  const RANK = { poll: 0, longpoll: 1, sse: 2 };
  const LABELS = { live: 'Live', reconnecting: 'Reconnecting…', polling: 'Polling',
                   longpoll: 'Live (long-poll)', offline: 'Offline' };
  const LONGPOLL_WAIT = 25;     // seconds the server may hold a long-poll
  const SSE_MAX_ERRORS = 3;     // consecutive EventSource errors without a message before falling back
  const QUIET = 10000;          // ms a higher mode must be advertised before we climb back to it

  const $ = (sel, root) => (root || document).querySelector(sel);
  const isTerminal = (p) => !!p && (p.state === 'complete' || p.state === 'failed');
  const clampPct = (n) => Math.max(0, Math.min(100, Math.round(Number(n) || 0)));
  const capitalize = (s) => (s ? s.charAt(0).toUpperCase() + s.slice(1).toLowerCase() : '');
  const csrfToken = () => { const m = $('meta[name="csrf-token"]'); return m ? m.content : ''; };
  const withQuery = (url, q) => url + (url.indexOf('?') >= 0 ? '&' : '?') + q;

  // Full jitter (base 1 s, cap 30 s): clients that lost the same server do not return in lockstep.
  const backoff = (n) => Math.random() * Math.min(30000, 1000 * Math.pow(2, n));

  /* fetch that never rejects: resolves {status, data, mode, retryAfter}; status 0 = network error.
   * The returned promise has .abort() so a transport switch can drop a parked long-poll. */
  function request(url, opts) {
    opts = opts || {};
    const ctl = new AbortController();
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
    const p = fetch(url, { method: opts.method || 'GET', headers, credentials: 'same-origin',
                           cache: 'no-store', signal: ctl.signal })
      .then((resp) => {
        const json = (resp.headers.get('Content-Type') || '').indexOf('json') >= 0;
        return (json ? resp.json() : resp.text()).catch(() => null).then((data) => ({
          status: resp.status, data, mode: resp.headers.get('X-Livedoc-Mode'),
          retryAfter: parseInt(resp.headers.get('Retry-After'), 10),
        }));
      }, (err) => ({ status: 0, aborted: err && err.name === 'AbortError' }));
    p.abort = () => ctl.abort();
    return p;
  }

  /* One progress feed as a chain of transports: SSE, then long-poll, then poll.
   * It knows only URLs and callbacks, nothing of documents or the DOM, so a multiplexed stream can
   * reuse it later. Options: mode, eventsUrl, statusUrl, pollInterval, seq, and the callbacks
   * onState(progress), onConnection(state, text), onAuthLost(), onGone(). */
  class Transport {
    constructor(o) {
      this.o = o;
      this.seq = o.seq || 0;
      this.mode = null;
      this.stopped = true;
      this.gen = 0;           // bumped on every switch; callbacks of an older transport then do nothing
      this.failures = 0;      // consecutive failures of the current mode (drives backoff)
      this.falls = 0;         // times a higher mode failed us: each one lengthens the climb-back wait
      this.wantSince = 0;
      this.es = null; this.req = null; this.timer = null;
    }

    start(mode) { this.stopped = false; this.switchTo(mode || this.o.mode); }
    stop() { this.stopped = true; this.halt(); }

    halt() {
      this.gen++;
      if (this.es) { this.es.close(); this.es = null; }
      if (this.req) { this.req.abort(); this.req = null; }
      clearTimeout(this.timer);
    }

    conn(state, text) { this.connState = state; this.o.onConnection(state, text || LABELS[state]); }

    switchTo(mode, failed) {
      if (!Object.prototype.hasOwnProperty.call(RANK, mode)) mode = 'poll';  // 'off' and the unknown
      if (mode === 'sse' && !window.EventSource) mode = 'longpoll';
      this.halt();
      if (failed) this.falls++;
      this.mode = mode; this.failures = 0; this.wantSince = 0;
      if (mode === 'sse') this.sse(); else this.fetchLoop();
    }

    // Dedupe by seq: replays (Last-Event-ID, a long-poll racing a push) must not move the UI back.
    apply(p) {
      if (!p || typeof p.seq !== 'number' || p.seq <= this.seq) return;
      this.seq = p.seq;
      if (isTerminal(p)) { this.stop(); this.conn('offline', 'Up to date'); }
      this.o.onState(p);
    }

    sse() {
      const gen = this.gen;
      const es = this.es = new EventSource(this.o.eventsUrl);
      let errors = 0;
      const mine = () => gen === this.gen;
      const onData = (e) => {
        if (!mine()) return;
        errors = 0;
        let p = null;
        try { p = JSON.parse(e.data); } catch (_) { return; }
        this.apply(p);
      };
      this.conn('reconnecting', 'Connecting…');
      es.onopen = () => { if (mine()) this.conn('live'); };
      es.addEventListener('progress', onData);
      es.addEventListener('complete', onData);
      // The operator switched transport: this stream is ending on purpose, follow it down.
      es.addEventListener('mode', (e) => {
        if (!mine()) return;
        let m = null;
        try { m = JSON.parse(e.data).mode; } catch (_) { /* ignore a malformed notice */ }
        if (m && m !== 'sse') this.switchTo(m);
      });
      // Both the server's `error` event (a failed conversion, with data) and connection errors
      // (a plain Event) arrive here.
      es.addEventListener('error', (e) => {
        if (!mine()) return;
        if (e.data !== undefined) { onData(e); return; }
        errors++;
        // CLOSED: a 204 (real-time off) or any non-stream answer; the browser will not retry.
        if (es.readyState === EventSource.CLOSED || errors >= SSE_MAX_ERRORS) {
          this.switchTo('longpoll', true);
        } else {
          this.conn('reconnecting');
        }
      });
    }

    // Long-poll and poll share the status endpoint; only `after`/`wait` and the pacing differ.
    fetchLoop() {
      const gen = this.gen;
      const long = this.mode === 'longpoll';
      const url = long ? withQuery(this.o.statusUrl, 'after=' + this.seq + '&wait=' + LONGPOLL_WAIT)
                       : this.o.statusUrl;
      const started = Date.now();
      const before = this.seq;
      if (!this.failures) this.conn(long ? 'longpoll' : 'polling');
      const req = this.req = request(url);
      req.then((r) => {
        if (gen !== this.gen || r.aborted) return;
        this.req = null;
        if (r.status !== 200) { this.failed(r); return; }
        this.failures = 0;
        this.conn(long ? 'longpoll' : 'polling');
        this.apply(r.data);
        if (gen !== this.gen || this.follow(r.mode)) return;
        // A long-poll answered at once with nothing new is not being held (e.g. the server turned
        // real-time off): pace it like a poll rather than hammer the server.
        const held = long && (this.seq > before || Date.now() - started > 1000);
        this.later(held ? 0 : this.o.pollInterval);
      });
    }

    failed(r) {
      if (r.status === 401) {
        this.stop(); this.conn('offline', 'Session expired'); this.o.onAuthLost(); return;
      }
      if (r.status === 403 || r.status === 404) {
        this.stop(); this.conn('offline'); if (this.o.onGone) this.o.onGone(); return;
      }
      // A proxy that times out held requests (502/504) breaks long-poll but not plain polling.
      if (this.mode === 'longpoll' && r.status >= 500 && this.failures >= 2) {
        this.switchTo('poll', true); return;
      }
      const delay = r.status === 429 ? (r.retryAfter >= 0 ? r.retryAfter : 5) * 1000
                                     : backoff(this.failures);
      this.failures++;
      this.conn(navigator.onLine === false ? 'offline' : 'reconnecting');
      this.later(delay);
    }

    later(ms) {
      const gen = this.gen;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => { if (gen === this.gen) this.fetchLoop(); }, ms);
    }

    /* X-Livedoc-Mode names the mode in force. Going down is the operator's rollback: obey at once.
     * Going up waits a jittered quiet period, so a crowd of pages does not reopen streams at the
     * same instant, and waits longer each time that higher mode has already failed here. */
    follow(m) {
      if (!m) return false;
      if (!Object.prototype.hasOwnProperty.call(RANK, m)) m = 'poll';
      if (m === 'sse' && !window.EventSource) m = 'longpoll';
      if (RANK[m] < RANK[this.mode]) { this.switchTo(m); return true; }
      if (RANK[m] === RANK[this.mode]) { this.wantSince = 0; return false; }
      const now = Date.now();
      if (!this.wantSince) {
        this.wantSince = now;
        this.quiet = QUIET * Math.pow(2, Math.min(this.falls, 4)) * (0.5 + Math.random());
      }
      if (now - this.wantSince < this.quiet) return false;
      this.switchTo(m);
      return true;
    }

    // Back online: retry now instead of waiting out the backoff (EventSource retries by itself).
    kick() { if (!this.stopped && !this.es && this.failures) this.switchTo(this.mode); }
  }

  /* ---- Viewer ---------------------------------------------------------------------------------- */
  function initViewer(root) {
    const d = root.dataset;
    const el = {
      bar: $('#progress'), fill: $('#progress .progress-fill'), pct: $('#progress-percent'),
      stage: $('#stage'), pageCount: $('#page-count'), message: $('#message'), conn: $('#connection'),
      live: $('#live-region'), pages: $('#pages'), error: $('#error'), errorMsg: $('#error-message'),
      retryForm: $('#retry-form'), notice: $('#notice'),
    };
    const initialMode = d.mode || 'sse';
    let state = null;
    try { state = JSON.parse(d.progress); } catch (_) { /* fall back to the bare attributes */ }
    if (!state || typeof state.seq !== 'number') {
      state = { seq: Number(d.seq) || 0, state: d.state, stage: d.state, percent: 0, page: 0, pages: 0 };
    }
    let transport = null;

    const announce = (text) => { el.live.textContent = text; };
    const valueText = (p) => capitalize(p.stage) + (p.pages ? ' page ' + p.page + ' of ' + p.pages : '') +
      ', ' + clampPct(p.percent) + '%';

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
      el.bar.setAttribute('aria-valuetext', valueText(p));
      el.pct.textContent = pct + '%';
      el.stage.textContent = capitalize(p.stage);
      el.pageCount.textContent = p.pages ? 'page ' + p.page + ' of ' + p.pages : '';
      el.message.textContent = p.state === 'failed' ? '' : p.message || '';  // #error says it
      root.dataset.seq = String(p.seq);
      root.dataset.state = p.state;
      if (p.state === 'failed') {
        const err = p.error || {};
        showError(err.message || p.message, !!err.retryable);
      } else {
        el.error.hidden = true;
        const btn = $('#retry');
        if (btn) btn.remove();
      }
      // Announce what changed in kind, not every percent.
      if (quiet) return;
      if (p.state === 'complete') {
        announce('Conversion complete, ' + p.pages + (p.pages === 1 ? ' page' : ' pages'));
      } else if (p.state === 'failed') {
        announce('Conversion failed: ' + ((p.error && p.error.message) || p.message || ''));
      } else if (!prev || p.state !== prev.state || p.stage !== prev.stage) {
        announce(capitalize(p.stage) + (p.message ? ': ' + p.message : ''));
      }
    }

    function onState(p) {
      const prev = state;
      state = p;
      render(p, prev);
      if (p.state === 'complete') loadPages(0);
    }

    // The pages arrive as a server-rendered fragment: no reload, and focus lands on its heading.
    function loadPages(attempt) {
      request(d.pagesUrl, { headers: { Accept: 'text/html' } }).then((r) => {
        if (r.status === 200 && typeof r.data === 'string') {
          el.pages.innerHTML = r.data;
          const h = $('#pages-heading');
          if (h) h.focus();
        } else if (r.status === 401) {
          sessionExpired();
        } else if (attempt < 5) {
          setTimeout(() => loadPages(attempt + 1), backoff(attempt + 1));
        } else {
          el.pages.textContent = '';
          const a = document.createElement('a');
          a.href = window.location.pathname; a.textContent = 'Reload to see the pages';
          el.pages.appendChild(a);
        }
      });
    }

    function setConnection(s, text) {
      el.conn.dataset.state = s;
      el.conn.textContent = text;
    }

    function sessionExpired() {
      el.notice.textContent = 'Session expired — ';
      const a = document.createElement('a');
      a.href = d.loginUrl || '/login'; a.textContent = 'log in again';
      el.notice.appendChild(a);
      el.notice.hidden = false;
      announce('Session expired. Log in again to see progress.');
    }

    function startTransport(mode) {
      if (transport) transport.stop();
      transport = new Transport({
        mode, eventsUrl: d.eventsUrl, statusUrl: d.statusUrl, seq: state.seq,
        pollInterval: Math.max(500, Number(d.pollInterval) || 2000),
        onState, onConnection: setConnection, onAuthLost: sessionExpired,
        onGone: () => announce('This document is no longer available.'),
      });
      transport.start();
    }

    // Retry with fetch; the same form still works without script.
    el.retryForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const btn = $('#retry');
      if (!btn || btn.disabled) return;
      btn.disabled = true;
      request(d.retryUrl, { method: 'POST', headers: { 'X-CSRFToken': csrfToken() } }).then((r) => {
        btn.disabled = false;
        if (r.status === 202 && r.data && r.data.progress) {
          const p = r.data.progress;
          if (p.seq > state.seq) onState(p);  // reset the UI to the new, queued attempt
          $('#status-heading').focus();       // the button just vanished: keep keyboard users in place
          startTransport(initialMode);
          return;
        }
        if (r.status === 401) { sessionExpired(); return; }
        const msg = r.data && r.data.error && r.data.error.message;
        el.errorMsg.textContent = msg || 'The retry could not be started; try again in a moment.';
        announce(el.errorMsg.textContent);
      });
    });

    render(state, state, true);  // the exact width over the server's 10% step; nothing to announce
    if (isTerminal(state)) {
      // Complete but the page was rendered before the pages were in place: fetch them now.
      if (state.state === 'complete' && !$('#pages-heading')) loadPages(0);
    } else {
      startTransport(initialMode);
    }
    window.addEventListener('online', () => { if (transport) transport.kick(); });
    window.addEventListener('offline', () => {
      if (transport && !transport.stopped) setConnection('offline', LABELS.offline);
    });
    window.livedoc = {
      state: () => Object.assign({}, state),
      mode: () => (transport ? transport.mode : null),
      connection: () => el.conn.dataset.state,
    };
  }

  /* ---- Document list: refresh unfinished rows in place --------------------------------------- */
  function initList(table) {
    const interval = Math.max(1000, Number(table.dataset.pollInterval) || 3000);
    let failures = 0;
    const rows = () => Array.prototype.slice.call(table.querySelectorAll('tr[data-doc-id]'));
    const unfinished = () => rows().some((tr) => tr.dataset.state !== 'complete' && tr.dataset.state !== 'failed');

    function update(doc) {
      const tr = table.querySelector('tr[data-doc-id="' + doc.id + '"]');
      const p = doc.progress;
      if (!tr || !p || p.seq <= Number(tr.dataset.seq)) return;
      tr.dataset.seq = String(p.seq);
      tr.dataset.state = p.state;
      const badge = $('.doc-state', tr);
      badge.textContent = p.state;
      badge.dataset.state = p.state;
      $('.doc-stage', tr).textContent = p.state === 'failed' ? (p.message || '')
        : p.state === 'complete' ? '' : (p.stage || '');
      $('progress', tr).value = clampPct(p.percent);
      $('.doc-percent', tr).textContent = clampPct(p.percent) + '%';
    }

    function tick() {
      if (!unfinished()) return;
      request(table.dataset.apiUrl).then((r) => {
        if (r.status === 401 || r.status === 403) return;  // logged out elsewhere: stop quietly
        let wait = interval;
        if (r.status === 200 && r.data && r.data.documents) {
          failures = 0;
          r.data.documents.forEach(update);
        } else {
          wait = r.status === 429 && r.retryAfter >= 0 ? r.retryAfter * 1000
            : Math.max(interval, backoff(failures++));
        }
        setTimeout(tick, wait);
      });
    }
    setTimeout(tick, interval);
  }

  /* ---- Admin: connection stats ----------------------------------------------------------------- */
  function initStats(box) {
    const make = (tag, text) => { const e = document.createElement(tag); e.textContent = String(text); return e; };
    // Rebuild a tbody from rows of values; ids in the first column are shown as code.
    const fill = (tbody, rows, n, code, empty) => {
      tbody.textContent = '';
      rows.forEach((values) => {
        const tr = tbody.appendChild(document.createElement('tr'));
        values.forEach((v, i) => {
          tr.appendChild(document.createElement('td')).appendChild(i === 0 && code ? make('code', v) : make('span', v));
        });
      });
      if (!rows.length) {
        const td = tbody.appendChild(document.createElement('tr')).appendChild(make('td', empty));
        td.colSpan = n; td.className = 'muted';
      }
    };
    const sorted = (obj) => Object.keys(obj || {}).sort().map((k) => [k, obj[k]]);

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
        setTimeout(tick, 3000);
      });
    }
    setTimeout(tick, 3000);
  }

  function init() {
    [['#viewer', initViewer], ['#doc-list', initList], ['#stats[data-stats-url]', initStats]]
      .forEach(([sel, fn]) => { const node = $(sel); if (node) fn(node); });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
