/* livedoc client: live conversion progress in the viewer and on "My documents", admin stats.
 *
 * One small file, no build step, no libraries. The CSP forbids inline script, so pages hand their
 * data over in data-* attributes. Pages are server-rendered: this script only keeps them current.
 */
(function () {
  'use strict';

  // The transport chain, best first. A page uses the best one the server allows and it can use,
  // and moves down on failure.
  const ORDER = ['ws', 'sse', 'longpoll', 'poll'];
  const RANK = { poll: 0, longpoll: 1, sse: 2, ws: 3 };
  const LABELS = { live: 'Live', reconnecting: 'Reconnecting…', polling: 'Polling',
                   longpoll: 'Live (long-poll)', offline: 'Offline' };
  const LONGPOLL_WAIT = 25;     // seconds the server may hold a long-poll
  const SSE_MAX_ERRORS = 3;     // consecutive EventSource errors without a message before falling back
  const WS_MAX_DROPS = 3;       // consecutive short-lived WebSockets before falling back to SSE
  const WS_STABLE = 15000;      // ms a WebSocket must live for its drop not to count against it
  const MAX_DOCS = 50;          // documents one stream or socket may watch (MAX_DOCS_PER_STREAM)
  const QUIET = 10000;          // ms a higher mode must be advertised before we climb back to it

  const $ = (sel, root) => (root || document).querySelector(sel);
  const isTerminal = (p) => !!p && (p.state === 'complete' || p.state === 'failed');
  const clampPct = (n) => Math.max(0, Math.min(100, Math.round(Number(n) || 0)));
  const capitalize = (s) => (s ? s.charAt(0).toUpperCase() + s.slice(1).toLowerCase() : '');
  const csrfToken = () => { const m = $('meta[name="csrf-token"]'); return m ? m.content : ''; };
  const withQuery = (url, q) => url + (url.indexOf('?') >= 0 ? '&' : '?') + q;
  const errorText = (p) => (p.error && p.error.message) || p.message || '';

  // Full jitter (base 1 s, cap 30 s): clients that lost the same server do not return in lockstep.
  const backoff = (n) => Math.random() * Math.min(30000, 1000 * Math.pow(2, n));

  /* fetch that never rejects: resolves {status, data, mode, retryAfter}; status 0 = network error.
   * The returned promise has .abort() so a transport switch can drop a parked long-poll. */
  function request(url, opts) {
    opts = opts || {};
    const ctl = new AbortController();
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
    const p = fetch(url, { method: opts.method || 'GET', headers, body: opts.body,
                           credentials: 'same-origin', cache: 'no-store', signal: ctl.signal })
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

  /* The live progress of a SET of documents over one connection: WebSocket, SSE, long-poll or poll.
   *
   * It knows URLs and callbacks, nothing of the DOM. The viewer is a set of one (single-document
   * SSE, long-poll on its status URL); the list page names many (the multiplexed SSE stream, or
   * one poll of the whole list). Options:
   *   mode            the mode the page was rendered with (the server's best one)
   *   docs            [[id, progress], ...] known so far; unfinished ones are watched
   *   wsUrl           WebSocket endpoint (path); absent = no WebSocket
   *   sseUrl(ids, cursor)  the SSE URL for these documents, resuming after cursor
   *   statusUrl       single-document status URL: long-poll and poll (viewer)
   *   listUrl         the document list, polled for every document at once (list page)
   *   pollInterval, pingInterval (ms)
   *   onState(id, progress), onConnection(state, text), onAuthLost(), onGone(id)
   */
  class Feed {
    constructor(o) {
      this.o = o;
      this.seqs = new Map();  // id → last seq applied: replays must not move the UI back
      this.open = new Set();  // ids not yet terminal: what the connection watches
      this.mode = null;
      this.stopped = true;
      this.gen = 0;           // bumped on every switch; callbacks of an older connection then do nothing
      this.failures = 0;      // consecutive failures of the current mode (drives backoff)
      this.falls = 0;         // times a higher mode failed us: each one lengthens the climb-back wait
      this.wantSince = 0;
      this.cursor = '';       // the multiplexed stream's last event id: resumes a reopened stream
      this.applied = 0;       // progress updates applied, to tell a held long-poll from an idle one
      this.subscribed = new Set();  // ids subscribed on the open WebSocket
      this.wsWorked = false;  // a WebSocket opened since the last start: later failures may be transient
      this.es = null; this.ws = null; this.req = null; this.timer = null; this.watchdog = null;
      (o.docs || []).forEach(([id, p]) => this.track(id, p));
    }

    track(id, p) {
      if (!this.seqs.has(id)) this.seqs.set(id, (p && p.seq) || 0);
      if (!isTerminal(p)) this.open.add(id);
    }

    supports(m) {
      if (m === 'ws') return !!(this.o.wsUrl && window.WebSocket);
      if (m === 'sse') return !!(this.o.sseUrl && window.EventSource);
      if (m === 'longpoll') return !!this.o.statusUrl;
      return true;
    }

    // The mode itself if this page can use it, else the next one down ('off' and the unknown: poll).
    usable(m) {
      let i = ORDER.indexOf(m);
      if (i < 0) i = ORDER.length - 1;
      while (!this.supports(ORDER[i])) i++;
      return ORDER[i];
    }

    below(m) { return this.usable(ORDER[Math.min(ORDER.indexOf(m) + 1, ORDER.length - 1)]); }

    start(mode) {
      this.stopped = false;
      this.wsWorked = false;
      this.switchTo(mode || this.mode || this.o.mode);
    }

    stop() { this.stopped = true; this.halt(); }

    halt() {
      this.gen++;
      if (this.es) { this.es.close(); this.es = null; }
      if (this.ws) { this.ws.onclose = null; this.ws.close(); this.ws = null; }
      if (this.req) { this.req.abort(); this.req = null; }
      clearTimeout(this.timer);
      clearTimeout(this.watchdog);
    }

    conn(state, text) { this.connState = state; this.o.onConnection(state, text || LABELS[state]); }

    switchTo(mode, failed) {
      mode = this.usable(mode);
      this.halt();
      if (failed) this.falls++;
      this.mode = mode; this.failures = 0; this.wantSince = 0;
      if (!this.open.size) { this.done(); return; }
      if (mode === 'ws') this.openWs();
      else if (mode === 'sse') this.openSse();
      else this.fetchLoop();
    }

    done() { this.stop(); this.conn('offline', 'Up to date'); }

    /* Watch one more document (a new upload) without dropping the others: a WebSocket subscribes
     * it, SSE reopens its stream with the cursor (nothing is lost), polling picks it up next tick. */
    add(id, p) {
      const known = this.seqs.has(id);
      this.track(id, p);
      if (known || !this.open.has(id)) return;
      if (this.stopped) { this.start(); return; }
      if (this.mode === 'ws') {
        this.topUp();  // a socket still connecting subscribes everything once it opens
      } else if (this.mode === 'sse') {
        this.reopenSse();
      }
    }

    apply(id, p) {
      const last = this.seqs.get(id);
      if (!p || typeof p.seq !== 'number' || last === undefined || p.seq <= last) return;
      this.seqs.set(id, p.seq);
      this.applied++;
      if (isTerminal(p)) this.open.delete(id);
      this.o.onState(id, p);
      if (!this.open.size && !this.stopped) { this.done(); return; }
      // The server ends a subscription after its terminal event: that frees a slot.
      if (isTerminal(p) && this.subscribed.delete(id)) this.topUp();
    }

    gone(id) {
      this.open.delete(id);
      this.subscribed.delete(id);
      if (this.o.onGone) this.o.onGone(id);
      if (!this.open.size && !this.stopped) { this.stop(); this.conn('offline'); }
    }

    /* ---- WebSocket: one socket, documents subscribed and unsubscribed as messages ---- */
    openWs() {
      const gen = this.gen;
      const mine = () => gen === this.gen;
      const url = new URL(this.o.wsUrl, window.location.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      let ws;
      try { ws = this.ws = new WebSocket(url.href); } catch (_) { this.switchTo(this.below('ws'), true); return; }
      let openedAt = 0;
      if (!this.failures) this.conn('reconnecting', 'Connecting…');
      ws.onopen = () => {
        if (!mine()) return;
        openedAt = Date.now();
        this.wsWorked = true;
        this.conn('live');
        this.subscribed.clear();
        this.topUp();
        this.arm(gen);
      };
      ws.onmessage = (e) => {
        if (!mine()) return;
        this.arm(gen);
        let m = null;
        try { m = JSON.parse(e.data); } catch (_) { return; }
        if (m && typeof m === 'object') this.wsMessage(m);
      };
      ws.onclose = () => {
        if (!mine()) return;
        this.ws = null;
        clearTimeout(this.watchdog);
        // Refused before it ever opened here (flags off, a proxy that drops upgrades, logged out):
        // SSE at once. Later, only repeated short-lived sockets count as a failing transport.
        if (!this.wsWorked) { this.switchTo(this.below('ws'), true); return; }
        if (openedAt && Date.now() - openedAt >= WS_STABLE) this.failures = 0;
        if (++this.failures >= WS_MAX_DROPS) { this.switchTo(this.below('ws'), true); return; }
        this.conn(navigator.onLine === false ? 'offline' : 'reconnecting');
        this.timer = setTimeout(() => { if (mine()) this.openWs(); }, backoff(this.failures));
      };
    }

    send(msg) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg)); }

    // Subscribe unfinished documents not yet subscribed, up to the server's per-socket cap.
    topUp() {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      const more = Array.from(this.open).filter((id) => !this.subscribed.has(id))
        .slice(0, Math.max(0, MAX_DOCS - this.subscribed.size));
      if (!more.length) return;
      more.forEach((id) => this.subscribed.add(id));
      this.send({ type: 'subscribe', documents: more });
    }

    // A peer that vanished without a close frame is noticed only by silence: the server pings
    // every pingInterval, so a few missed pings mean the socket is dead.
    arm(gen) {
      clearTimeout(this.watchdog);
      this.watchdog = setTimeout(() => {
        const ws = this.ws;
        if (gen !== this.gen || !ws || !ws.onclose) return;
        // A dead peer may never answer our close frame: run the drop handling now, not on close.
        const dropped = ws.onclose;
        ws.onclose = null;
        ws.close();
        dropped();
      }, 2.5 * this.o.pingInterval + 5000);
    }

    wsMessage(m) {
      if (m.type === 'ping') { this.send({ type: 'pong' }); return; }
      if (m.type === 'mode') {
        // The operator switched transports; the server closes this socket next.
        if (m.mode && m.mode !== 'ws') this.switchTo(m.mode);
        return;
      }
      if (m.type === 'subscribed') { (m.denied || []).forEach((id) => this.gone(id)); return; }
      // {type: 'error', code, message} without a document answers a bad message of ours: nothing
      // to show. With document_id and data, `error` is a failed conversion like any other state.
      if (m.document_id && m.data) this.apply(m.document_id, m.data);
    }

    /* ---- SSE: single-document stream, or one multiplexed stream for many ---- */
    openSse() {
      const gen = this.gen;
      const mine = () => gen === this.gen;
      const ids = Array.from(this.open).slice(0, MAX_DOCS);
      const es = this.es = new EventSource(this.o.sseUrl(ids, this.cursor));
      let errors = 0;
      const onData = (e) => {
        if (!mine()) return;
        errors = 0;
        if (e.lastEventId) this.cursor = e.lastEventId;
        let p = null;
        try { p = JSON.parse(e.data); } catch (_) { return; }
        // Single-document events carry no document_id: that stream names one document.
        this.apply((p && p.document_id) || ids[0], p);
        // More than MAX_DOCS unfinished: name the waiting ones as soon as a slot frees up.
        if (mine() && isTerminal(p) && Array.from(this.open).some((id) => ids.indexOf(id) < 0)) {
          this.reopenSse();
        }
      };
      if (!this.failures) this.conn('reconnecting', 'Connecting…');
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
        // CLOSED: a 204 (real-time off, nothing to watch) or any non-stream answer; the browser
        // will not retry by itself.
        if (es.readyState === EventSource.CLOSED || errors >= SSE_MAX_ERRORS) {
          this.switchTo(this.below('sse'), true);
        } else {
          this.conn('reconnecting');
        }
      });
    }

    // A new EventSource sends no Last-Event-ID: the cursor query parameter carries the position.
    reopenSse() {
      this.halt();
      this.openSse();
    }

    /* ---- Long-poll (one document) and poll (its status, or the whole list) ---- */
    fetchLoop() {
      const gen = this.gen;
      const long = this.mode === 'longpoll';
      const single = Array.from(this.open)[0];
      const url = long ? withQuery(this.o.statusUrl, 'after=' + this.seqs.get(single) + '&wait=' + LONGPOLL_WAIT)
                       : this.o.statusUrl || this.o.listUrl;
      const started = Date.now();
      const before = this.applied;
      if (!this.failures) this.conn(long ? 'longpoll' : 'polling');
      const req = this.req = request(url);
      req.then((r) => {
        if (gen !== this.gen || r.aborted) return;
        this.req = null;
        if (r.status !== 200) { this.failed(r); return; }
        this.failures = 0;
        this.conn(long ? 'longpoll' : 'polling');
        if (r.data && Array.isArray(r.data.documents)) {
          r.data.documents.forEach((doc) => this.apply(doc.id, doc.progress));
        } else if (r.data) {
          this.apply(r.data.document_id || single, r.data);
        }
        if (gen !== this.gen || this.follow(r.mode)) return;
        // A long-poll answered at once with nothing new is not being held (e.g. the server turned
        // real-time off): pace it like a poll rather than hammer the server.
        const held = long && (this.applied > before || Date.now() - started > 1000);
        this.later(held ? 0 : this.o.pollInterval);
      });
    }

    failed(r) {
      if (r.status === 401) {
        this.stop(); this.conn('offline', 'Session expired'); this.o.onAuthLost(); return;
      }
      if (r.status === 403 || r.status === 404) {
        Array.from(this.open).forEach((id) => this.gone(id)); return;
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

    /* X-Livedoc-Mode names the best mode in force. Going down is the operator's rollback: obey at
     * once. Going up waits a jittered quiet period, so a crowd of pages does not reopen streams at
     * the same instant, and waits longer each time that higher mode has already failed here. */
    follow(m) {
      if (!m) return false;
      m = this.usable(m);
      if (RANK[m] < RANK[this.mode]) { this.switchTo(m); return true; }
      if (RANK[m] === RANK[this.mode]) { this.wantSince = 0; return false; }
      const now = Date.now();
      if (!this.wantSince) {
        this.wantSince = now;
        this.quiet = QUIET * Math.pow(2, Math.min(this.falls, 4)) * (0.5 + Math.random());
      }
      if (now - this.wantSince < this.quiet) return false;
      this.wsWorked = false;  // a fresh try: a refused upgrade should drop to SSE at once again
      this.switchTo(m);
      return true;
    }

    // Back online: retry now instead of waiting out the backoff (EventSource retries by itself).
    kick() { if (!this.stopped && !this.es && this.failures) this.switchTo(this.mode); }
  }

  // Page-level wiring shared by the viewer and the list: online/offline, the connection indicator.
  function watchNetwork(feed, setConnection) {
    window.addEventListener('online', () => { if (feed()) feed().kick(); });
    window.addEventListener('offline', () => {
      if (feed() && !feed().stopped) setConnection('offline', LABELS.offline);
    });
  }

  function sessionNotice(notice, loginUrl) {
    notice.textContent = 'Session expired — ';
    const a = document.createElement('a');
    a.href = loginUrl || '/login'; a.textContent = 'log in again';
    notice.appendChild(a);
    notice.hidden = false;
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
    let feed = null;

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
        showError(errorText(p), !!(p.error && p.error.retryable));
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
        announce('Conversion failed: ' + errorText(p));
      } else if (!prev || p.state !== prev.state || p.stage !== prev.stage) {
        announce(capitalize(p.stage) + (p.message ? ': ' + p.message : ''));
      }
    }

    function onState(id, p) {
      const prev = state;
      state = p;
      render(p, prev);
      syncPages(p);
    }

    /* Pages appear as they become ready: the column of placeholders comes from the document's
     * layout (fetched once per attempt), and each ready page's image replaces its placeholder. */
    let layoutAttempt = null;
    let shown = 0;
    let fetching = false;
    function syncPages(p) {
      const column = $('#page-column');
      if (!column || layoutAttempt !== p.attempt) {
        if (fetching || !(p.ready > 0 || p.state === 'complete')) return;
        fetching = true;
        request(d.docUrl).then((r) => {
          fetching = false;
          if (r.status === 200 && r.data && r.data.sizes) {
            buildColumn(r.data);
            layoutAttempt = r.data.progress.attempt;
            shown = 0;
            fillReady(state);
          } else if (r.status === 401) {
            sessionExpired();
          }
        });
        return;
      }
      fillReady(p);
    }

    function buildColumn(doc) {
      const sec = el.pages;
      sec.textContent = '';
      const h = document.createElement('h2');
      h.id = 'pages-heading'; h.tabIndex = -1;
      h.textContent = 'Pages (' + doc.sizes.length + ')';
      sec.appendChild(h);
      const col = document.createElement('div');
      col.id = 'page-column'; col.className = 'page-column'; col.dataset.filesUrl = doc.files_url;
      doc.sizes.forEach((size, i) => {
        const fig = document.createElement('figure');
        fig.id = 'page-' + (i + 1); fig.className = 'page pending';
        fig.dataset.n = String(i + 1); fig.dataset.width = size[0]; fig.dataset.height = size[1];
        const ph = document.createElement('div');
        ph.className = 'placeholder'; ph.setAttribute('role', 'img');
        ph.setAttribute('aria-label', 'Page ' + (i + 1) + ', not converted yet');
        fig.appendChild(ph);
        const cap = document.createElement('figcaption');
        cap.textContent = 'Page ' + (i + 1);
        fig.appendChild(cap);
        col.appendChild(fig);
      });
      sec.appendChild(col);
    }

    function fillReady(p) {
      const column = $('#page-column');
      if (!column) return;
      const upto = Math.min(p.ready || 0, column.children.length);
      for (let n = shown + 1; n <= upto; n++) {
        const fig = $('#page-' + n);
        if (!fig || !fig.classList.contains('pending')) continue;
        const img = document.createElement('img');
        img.loading = 'lazy'; img.alt = 'Page ' + n;
        img.width = Number(fig.dataset.width); img.height = Number(fig.dataset.height);
        img.src = column.dataset.filesUrl + 'page-' + String(n).padStart(4, '0') + '.jpg';
        const ph = fig.querySelector('.placeholder');
        if (ph) ph.replaceWith(img);
        fig.classList.remove('pending');
      }
      shown = Math.max(shown, upto);
    }

    function setConnection(s, text) {
      el.conn.dataset.state = s;
      el.conn.textContent = text;
    }

    function sessionExpired() {
      sessionNotice(el.notice, d.loginUrl);
      announce('Session expired. Log in again to see progress.');
    }

    function startFeed(mode) {
      if (feed) feed.stop();
      feed = new Feed({
        mode, docs: [[d.docId, state]], wsUrl: d.wsUrl, sseUrl: () => d.eventsUrl, statusUrl: d.statusUrl,
        pollInterval: Math.max(500, Number(d.pollInterval) || 2000),
        pingInterval: Number(d.pingInterval) || 30000,
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
      request(d.retryUrl, { method: 'POST', headers: { 'X-CSRFToken': csrfToken() } }).then((r) => {
        btn.disabled = false;
        if (r.status === 202 && r.data && r.data.progress) {
          const p = r.data.progress;
          if (p.seq > state.seq) onState(d.docId, p);  // reset the UI to the new, queued attempt
          $('#status-heading').focus();       // the button just vanished: keep keyboard users in place
          startFeed(initialMode);
          return;
        }
        if (r.status === 401) { sessionExpired(); return; }
        const msg = r.data && r.data.error && r.data.error.message;
        el.errorMsg.textContent = msg || 'The retry could not be started; try again in a moment.';
        announce(el.errorMsg.textContent);
      });
    });

    render(state, state, true);  // the exact width over the server's 10% step; nothing to announce
    const served = $('#page-column');
    if (served) {
      layoutAttempt = state.attempt;
      shown = served.querySelectorAll('figure.page:not(.pending)').length;
    }
    syncPages(state);
    if (!isTerminal(state)) {
      startFeed(initialMode);
    }
    watchNetwork(() => feed, setConnection);
    window.livedoc = {
      state: () => Object.assign({}, state),
      mode: () => (feed ? feed.mode : null),
      connection: () => el.conn.dataset.state,
    };
  }

  /* ---- My documents: every row live over one connection; uploads join without a reload ------- */
  function initList(root) {
    const d = root.dataset;
    const tbody = $('#doc-list tbody', root);
    const form = $('#upload-form', root);
    const live = $('#list-live', root);
    const connEl = $('#connection', root);
    const sizeUnits = ['kB', 'MB', 'GB', 'TB'];

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
      const doing = p.stage && p.stage !== p.state ? capitalize(p.stage) +
        (p.pages ? ' page ' + p.page + ' of ' + p.pages : '') : '';
      $('.doc-stage', tr).textContent = p.state === 'failed' ? errorText(p) : p.state === 'complete' ? '' : doing;
      const bar = $('[role="progressbar"]', tr);
      bar.setAttribute('aria-valuenow', String(pct));
      bar.setAttribute('aria-valuetext', isTerminal(p) ? capitalize(p.state)
        : (doing || capitalize(p.state)) + ', ' + pct + '%');
      $('.progress-fill', bar).style.width = pct + '%';
      $('.doc-percent', tr).textContent = pct + '%';
    }

    function onState(id, p) {
      const tr = rowOf(id);
      if (!tr) return;
      render(tr, p);
      if (p.state === 'complete') {
        announce(nameOf(tr) + ': conversion complete' + (p.pages ? ', ' + p.pages + (p.pages === 1 ? ' page' : ' pages') : ''));
      } else if (p.state === 'failed') {
        announce(nameOf(tr) + ': conversion failed: ' + errorText(p));
      }
    }

    // Jinja's filesizeformat, so a row added here reads like the server-rendered ones.
    function fileSize(n) {
      if (n < 1000) return n + (n === 1 ? ' Byte' : ' Bytes');
      let i = 0;
      while (i < sizeUnits.length - 1 && n >= Math.pow(1000, i + 2)) i++;
      return (n / Math.pow(1000, i + 1)).toFixed(1) + ' ' + sizeUnits[i];
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
      const time = $('time', tr);
      time.setAttribute('datetime', iso);
      time.textContent = iso.slice(0, 10) + ' ' + iso.slice(11, 16);
      render(tr, doc.progress);
      tbody.insertBefore(tr, tbody.firstChild);
      const empty = $('#no-docs', root);
      if (empty) empty.remove();
    }

    const rows = Array.prototype.slice.call(tbody.querySelectorAll('tr[data-doc-id]'));
    const feed = new Feed({
      mode: d.mode || 'sse',
      docs: rows.map((tr) => [tr.dataset.docId, { seq: Number(tr.dataset.seq) || 0, state: tr.dataset.state }]),
      wsUrl: d.wsUrl,
      sseUrl: (ids, cursor) => withQuery(d.eventsUrl, 'docs=' + ids.map(encodeURIComponent).join(',') +
        (cursor ? '&cursor=' + encodeURIComponent(cursor) : '')),
      listUrl: d.listUrl,
      pollInterval: Math.max(1000, Number(d.pollInterval) || 3000),
      pingInterval: Number(d.pingInterval) || 30000,
      onState, onConnection: setConnection,
      onAuthLost: () => {
        sessionNotice($('#notice', root), d.loginUrl);
        announce('Session expired. Log in again to see progress.');
      },
      onGone: () => {},
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
      request(d.listUrl, { method: 'POST', body: new FormData(form),
                           headers: { 'X-CSRFToken': csrfToken() } }).then((r) => {
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
        const err = r.data && r.data.error;
        showUploadError((err && err.message) || (r.status === 429
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
    [['#viewer', initViewer], ['#doc-page', initList], ['#stats[data-stats-url]', initStats]]
      .forEach(([sel, fn]) => { const node = $(sel); if (node) fn(node); });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
