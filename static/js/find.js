/* Find in document: the server searches the ready pages; hits are listed, stepped through with
 * Enter / Shift+Enter or the arrows, and highlighted on their pages. */
import { plural } from './format.js';
import { $, errorMessage, make, request, withQuery } from './net.js';

export class Find {
  /** o: {form, searchUrl, pages (PageColumn), sidebar, ready() → pages ready, total() → pages,
   *      converting() → bool, onJump(n), onAuthLost()} */
  constructor(o) {
    this.o = o;
    this.input = $('#find', o.form);
    this.prev = $('#find-prev', o.form);
    this.next = $('#find-next', o.form);
    this.status = $('#find-status', o.form);
    this.list = $('#find-results');
    this.empty = $('#results-empty');
    this.query = '';
    this.hits = [];
    this.index = -1;
    this.searched = 0;
    this.readyAt = -1;            // pages ready when the last search was sent
    this.req = null;
    o.form.addEventListener('submit', (ev) => { ev.preventDefault(); this.enter(1); });
    this.input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && ev.shiftKey) { ev.preventDefault(); this.enter(-1); }
    });
    // The clear button (or Escape) of a search box empties it: the highlights go too.
    this.input.addEventListener('search', () => { if (!this.input.value.trim()) this.reset(); });
    // So does deleting its text: an empty box leaves no result of an earlier search behind.
    this.input.addEventListener('input', () => { if (!this.input.value.trim() && this.query) this.reset(); });
    this.prev.addEventListener('click', () => this.step(-1));
    this.next.addEventListener('click', () => this.step(1));
    this.list.addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-index]');
      if (!b) return;
      this.show(Number(b.dataset.index));
      o.sidebar.chosen();
    });
  }

  // Enter: the next hit of the same search, or a new search (also when more pages became ready).
  enter(dir) {
    const q = this.input.value.trim();
    if (!q) { this.reset(); return; }
    // (Not compared with searched_pages: a search that ran out of time or hits searched fewer.)
    if (q === this.query && this.hits.length && this.o.ready() === this.readyAt) { this.step(dir); return; }
    this.search(q);
  }

  reset() {
    if (this.req) this.req.abort();
    this.query = ''; this.hits = []; this.index = -1;
    this.list.textContent = '';
    this.empty.hidden = false;
    this.status.textContent = '';
    this.prev.disabled = this.next.disabled = true;
    this.o.pages.setHits(new Map(), 0);
  }

  search(q) {
    if (this.req) this.req.abort();
    this.status.textContent = 'Searching…';
    const readyAt = this.o.ready();
    const req = this.req = request(withQuery(this.o.searchUrl, 'q=' + encodeURIComponent(q)));
    req.then((r) => {
      if (req !== this.req || r.aborted) return;
      this.req = null;
      if (r.status === 401) { this.o.onAuthLost(); return; }
      if (r.status !== 200 || !r.data) {
        this.status.textContent = errorMessage(r, 'The search failed; try again.');
        return;
      }
      const before = this.query === q && this.index >= 0 ? this.hits[this.index] : null;
      this.query = q;
      this.hits = r.data.hits || [];
      this.searched = r.data.searched_pages || 0;
      this.readyAt = readyAt;
      this.total = r.data.pages || this.o.total();
      this.truncated = !!r.data.truncated;
      this.render();
      if (!this.hits.length) { this.index = -1; this.o.pages.setHits(new Map(), 0); this.say(); return; }
      // Start from where the reader is (or just after the hit they were on, when searching again).
      const from = before ? before.page : this.o.pages.current;
      let i = this.hits.findIndex((h) => (before ? h.page > from || (h.page === from && h.offset > before.offset)
                                                 : h.page >= from));
      if (i < 0) i = 0;
      this.show(i);
    });
  }

  // Every page's rectangles (they come with the page's first hit).
  rectsByPage() {
    const m = new Map();
    this.hits.forEach((h) => {
      if (!m.has(h.page)) m.set(h.page, []);
      (h.rects || []).forEach((r) => m.get(h.page).push(r));
    });
    return m;
  }

  render() {
    this.list.textContent = '';
    this.empty.hidden = !!this.hits.length;
    this.empty.textContent = this.hits.length ? '' : 'No matches.';
    const needle = this.query.toLowerCase();
    this.hits.forEach((h, i) => {
      const b = make('button', 'result');
      b.type = 'button';
      b.dataset.index = String(i);
      b.appendChild(make('span', 'result-page', 'Page ' + h.page));
      const snip = make('span', 'snippet');
      const text = String(h.snippet || '');
      const at = text.toLowerCase().indexOf(needle);
      if (at >= 0) {
        snip.append(text.slice(0, at), make('mark', '', text.slice(at, at + needle.length)),
                    text.slice(at + needle.length));
      } else {
        snip.textContent = text;
      }
      b.appendChild(snip);
      this.list.appendChild(make('li')).appendChild(b);
    });
    this.prev.disabled = this.next.disabled = this.hits.length === 0;
    if (this.hits.length && this.o.sidebar.isOpen) this.o.sidebar.show('tab-results');
  }

  step(dir) {
    if (!this.hits.length) return;
    this.show((this.index + dir + this.hits.length) % this.hits.length);
  }

  show(i) {
    this.index = i;
    const hit = this.hits[i];
    // Which of its page's hits it is: that one is drawn as the current match.
    const nth = this.hits.slice(0, i).filter((h) => h.page === hit.page).length;
    this.o.pages.setHits(this.rectsByPage(), hit.page, this.query, nth);
    const was = this.list.querySelector('[aria-current]');
    if (was) was.removeAttribute('aria-current');
    const b = this.list.querySelector('button[data-index="' + i + '"]');
    if (b) b.setAttribute('aria-current', 'true');
    const rects = this.rectsByPage().get(hit.page) || [];
    this.o.onJump(hit.page, rects.length ? rects[0][1] : 0);
    this.say();
  }

  // "Match 2 of 12 · searched 20 of 60 pages" while converting; said politely by the status role.
  say() {
    const n = this.hits.length;
    let text = n ? 'Match ' + (this.index + 1) + ' of ' + n + (this.truncated ? '+' : '')
                 : 'No matches';
    if (this.searched < this.total) {
      text += ' · searched ' + this.searched + ' of ' + plural(this.total, 'page') +
              (this.o.converting() ? ' (still converting)' : '');
    } else {
      text += ' in ' + plural(this.searched, 'page');
    }
    this.status.textContent = text;
  }
}
