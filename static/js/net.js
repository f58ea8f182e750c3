/* fetch, the CSRF token and the page's data-* settings: what every module that talks to the server needs. */

export const $ = (sel, root) => (root || document).querySelector(sel);
export const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
export const csrfToken = () => { const m = $('meta[name="csrf-token"]'); return m ? m.content : ''; };
export const withQuery = (url, q) => url + (url.indexOf('?') >= 0 ? '&' : '?') + q;

// Full jitter (base 1 s, cap 30 s): clients that lost the same server do not return in lockstep.
export const backoff = (n) => Math.random() * Math.min(30000, 1000 * Math.pow(2, n));

/** JSON from a data-* attribute (the CSP forbids inline script, so pages hand data over this way). */
export function dataJson(el, name, fallback) {
  try { const v = JSON.parse(el.dataset[name]); return v === null || v === undefined ? fallback : v; } catch (_) {
    return fallback;
  }
}

/** fetch that never rejects: resolves {status, data, mode, retryAfter}; status 0 = network error.
 *  The returned promise has .abort() so a transport switch can drop a parked long-poll. */
export function request(url, opts) {
  opts = opts || {};
  const ctl = new AbortController();
  const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
  if (opts.json !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.method && opts.method !== 'GET') headers['X-CSRFToken'] = csrfToken();
  const body = opts.json !== undefined ? JSON.stringify(opts.json) : opts.body;
  const p = fetch(url, { method: opts.method || 'GET', headers, body, keepalive: !!opts.keepalive,
                         credentials: 'same-origin', cache: 'no-store', signal: ctl.signal })
    .then((resp) => {
      const json = (resp.headers.get('Content-Type') || '').indexOf('json') >= 0;
      return (json ? resp.json() : resp.text()).catch(() => null).then((data) => ({
        status: resp.status, data, mode: resp.headers.get('X-Livedoc-Mode'),
        retryAfter: parseInt(resp.headers.get('Retry-After'), 10),
      }));
    }, (err) => ({ status: 0, aborted: !!err && err.name === 'AbortError' }));
  p.abort = () => ctl.abort();
  return p;
}

/** The API's error message, or a fallback for people. */
export const errorMessage = (r, fallback) => (r.data && r.data.error && r.data.error.message) || fallback;

/** "Session expired — log in again" in a notice element. */
export function sessionNotice(notice, loginUrl) {
  notice.textContent = 'Session expired — ';
  const a = document.createElement('a');
  a.href = loginUrl || '/login'; a.textContent = 'log in again';
  notice.appendChild(a);
  notice.hidden = false;
}

/** An element with a class and text, the one DOM builder the modules share. */
export function make(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
