/* The live progress of a SET of documents over one connection: WebSocket, SSE, long-poll or poll.
 *
 * It knows URLs and callbacks, nothing of the DOM. The viewer is a set of one (single-document
 * SSE, long-poll on its status URL); the list page names many (the multiplexed SSE stream, or
 * one poll of the whole list). Options:
 *   settings        the server's client settings: {mode, transports (best first), maxDocs,
 *                   longpollWait (s), pollInterval, pingInterval, connectTimeout (ms)}
 *   docs            [[id, progress], ...] known so far; unfinished ones are watched
 *   wsUrl           WebSocket endpoint (path); absent = no WebSocket
 *   sseUrl(ids, cursor)  the SSE URL for these documents, resuming after cursor
 *   statusUrl       single-document status URL: long-poll and poll (viewer)
 *   listUrl         the document list, polled for every document at once (list page)
 *   minPoll         the shortest poll interval this page accepts (ms)
 *   onState(id, progress), onConnection(state, text), onAuthLost(), onGone(id)
 */
import { isTerminal } from './format.js';
import { backoff, request, withQuery } from './net.js';

const LABELS = { live: 'Live', reconnecting: 'Reconnecting…', polling: 'Polling',
                 longpoll: 'Live (long-poll)', offline: 'Offline' };
const SSE_MAX_ERRORS = 3;     // consecutive EventSource errors without a message before falling back
const WS_MAX_DROPS = 3;       // consecutive short-lived WebSockets before falling back to SSE
const WS_STABLE = 15000;      // ms a WebSocket must live for its drop not to count against it
const QUIET = 10000;          // ms a higher mode must be advertised before we climb back to it
// Used only when a page hands over no settings: the chain the server documents.
const DEFAULTS = { mode: 'poll', transports: ['ws', 'sse', 'longpoll', 'poll'], maxDocs: 50, longpollWait: 25,
                   pollInterval: 2000, pingInterval: 30000, connectTimeout: 10000 };
// The WebSocket URL may come as a path (http: or https: once resolved) or already as ws:/wss:.
const WS_SCHEMES = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' };

export class Feed {
  constructor(o) {
    this.o = o;
    const s = this.settings = Object.assign({}, DEFAULTS, o.settings || {});
    this.order = s.transports.indexOf('poll') >= 0 ? s.transports : s.transports.concat(['poll']);
    this.pollInterval = Math.max(o.minPoll || 500, Number(s.pollInterval) || DEFAULTS.pollInterval);
    this.pingInterval = Number(s.pingInterval) || DEFAULTS.pingInterval;
    this.connectTimeout = Number(s.connectTimeout) || DEFAULTS.connectTimeout;
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
    this.lifeTimer = null;  // a new WebSocket or EventSource that must show life within connectTimeout
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
    let i = this.order.indexOf(m);
    if (i < 0) i = this.order.length - 1;
    while (!this.supports(this.order[i])) i++;
    return this.order[i];
  }

  // Higher is better: the last transport of the chain ranks 0.
  rank(m) { return this.order.length - 1 - this.order.indexOf(m); }

  below(m) { return this.usable(this.order[Math.min(this.order.indexOf(m) + 1, this.order.length - 1)]); }

  start(mode) {
    this.stopped = false;
    this.wsWorked = false;
    this.switchTo(mode || this.mode || this.settings.mode);
  }

  stop() { this.stopped = true; this.halt(); }

  halt() {
    this.gen++;
    if (this.es) { this.es.close(); this.es = null; }
    if (this.ws) { this.ws.onclose = null; this.ws.close(); this.ws = null; }
    if (this.req) { this.req.abort(); this.req = null; }
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    clearTimeout(this.lifeTimer);
  }

  /* A stream that neither opens nor delivers is abandoned after connectTimeout, whatever the browser
   * fires: a CSP block or a proxy that swallows the request may give `error` without `close`, or
   * nothing at all, and waiting for an event that never comes leaves the viewer at "Connecting…". */
  expectLife(gen, abandon) {
    clearTimeout(this.lifeTimer);
    this.lifeTimer = setTimeout(() => { if (gen === this.gen) abandon(); }, this.connectTimeout);
  }

  alive() { clearTimeout(this.lifeTimer); }

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
    let ws;
    try {
      url.protocol = WS_SCHEMES[url.protocol];
      ws = this.ws = new WebSocket(url.href);
    } catch (_) { this.switchTo(this.below('ws'), true); return; }
    let openedAt = 0;
    let heard = false;
    if (!this.failures) this.conn('reconnecting', 'Connecting…');
    ws.onopen = () => {
      if (!mine()) return;
      openedAt = Date.now();
      this.conn('live');
      this.subscribed.clear();
      this.topUp();
      this.arm(gen);
    };
    ws.onmessage = (e) => {
      if (!mine()) return;
      if (!heard) { heard = true; this.wsWorked = true; this.alive(); }
      this.arm(gen);
      let m = null;
      try { m = JSON.parse(e.data); } catch (_) { return; }
      if (m && typeof m === 'object') this.wsMessage(m);
    };
    const dropped = () => {
      this.ws = null;
      clearTimeout(this.watchdog);
      this.alive();
      // Refused or silent before it ever answered here (flags off, a proxy that drops upgrades, a
      // CSP block, logged out): SSE at once. Later, only repeated short-lived sockets count.
      if (!this.wsWorked) { this.switchTo(this.below('ws'), true); return; }
      if (openedAt && Date.now() - openedAt >= WS_STABLE) this.failures = 0;
      if (++this.failures >= WS_MAX_DROPS) { this.switchTo(this.below('ws'), true); return; }
      this.conn(navigator.onLine === false ? 'offline' : 'reconnecting');
      this.timer = setTimeout(() => { if (mine()) this.openWs(); }, backoff(this.failures));
    };
    ws.onclose = () => { if (mine()) dropped(); };
    // The server answers a subscription at once: no first message within the bound, no socket.
    this.expectLife(gen, () => { ws.onclose = null; ws.close(); dropped(); });
  }

  send(msg) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg)); }

  // Subscribe unfinished documents not yet subscribed, up to the server's per-socket cap.
  topUp() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const more = Array.from(this.open).filter((id) => !this.subscribed.has(id))
      .slice(0, Math.max(0, this.settings.maxDocs - this.subscribed.size));
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
    }, 2.5 * this.pingInterval + 5000);
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
    const ids = Array.from(this.open).slice(0, this.settings.maxDocs);
    const es = this.es = new EventSource(this.o.sseUrl(ids, this.cursor));
    let errors = 0;
    const onData = (e) => {
      if (!mine()) return;
      this.alive();
      errors = 0;
      if (e.lastEventId) this.cursor = e.lastEventId;
      let p = null;
      try { p = JSON.parse(e.data); } catch (_) { return; }
      // Single-document events carry no document_id: that stream names one document.
      this.apply((p && p.document_id) || ids[0], p);
      // More unfinished documents than one stream may name: name the waiting ones as soon as a slot frees up.
      if (mine() && isTerminal(p) && Array.from(this.open).some((id) => ids.indexOf(id) < 0)) {
        this.reopenSse();
      }
    };
    if (!this.failures) this.conn('reconnecting', 'Connecting…');
    const abandon = () => this.switchTo(this.below('sse'), true);
    this.expectLife(gen, abandon);
    es.onopen = () => { if (mine()) { this.alive(); this.conn('live'); } };
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
        this.expectLife(gen, abandon);  // the browser retries by itself: that retry is bound too
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
    const wait = 'after=' + this.seqs.get(single) + '&wait=' + this.settings.longpollWait;
    const url = long ? withQuery(this.o.statusUrl, wait)
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
      this.later(held ? 0 : this.pollInterval);
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
    if (this.rank(m) < this.rank(this.mode)) { this.switchTo(m); return true; }
    if (this.rank(m) === this.rank(this.mode)) { this.wantSince = 0; return false; }
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

/** Page-level wiring shared by the viewer and the list: online/offline and the indicator. */
export function watchNetwork(feed, setConnection) {
  window.addEventListener('online', () => { if (feed()) feed().kick(); });
  window.addEventListener('offline', () => {
    if (feed() && !feed().stopped) setConnection('offline', LABELS.offline);
  });
}
