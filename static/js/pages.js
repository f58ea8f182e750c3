/* The page column: every page of the document at its size, images and text layers only near the
 * viewport, zoom, the current page, and search highlights.
 *
 * Sizes are in pixels of the page images (rendered at `dpi`); 100% zoom shows a page at its
 * paper size (96 CSS px per inch). A text layer is PDF.js's idea: transparent spans at the runs'
 * positions, each stretched to its run's width, so selection, copy and the browser's find work.
 */
import { pageFile } from './format.js';
import { $, $$, make } from './net.js';
import { nearness } from './lazy.js';

export const ZOOM_STEPS = [0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4];
export const ZOOM_MIN = 0.5;
export const ZOOM_MAX = 4;
const AUTO_MAX = 1;          // "Automatic" fits the width but never beyond 100%
const NEAR = '150% 0px';      // pages within 1.5 viewports above or below hold their image and text
const HD_NEED = 1.15;         // ask for the sharper rendition when the screen needs this many more pixels

let measureCtx = null;
function textWidth(text) {
  // Width of the text at a 1 px font; canvas text scales linearly with the font size.
  if (!measureCtx) {
    measureCtx = document.createElement('canvas').getContext('2d');
    measureCtx.font = '100px sans-serif';
  }
  return measureCtx.measureText(text).width / 100;
}

export class PageColumn {
  /** opts: {dpi, hd (bool), toolbar (element), onCurrent(n, jumped), onMissing(n)} */
  constructor(section, opts) {
    this.section = section;
    this.column = $('#page-column', section);
    this.heading = $('#pages-heading', section);
    this.opts = opts;
    this.k100 = 96 / (Number(opts.dpi) || 110);
    this.sizes = [];
    this.figs = [];
    this.filesUrl = null;
    this.ready = 0;
    this.live = new Set();        // pages holding their image and text layer now
    this.hdFailed = new Set();
    this.hits = new Map();        // page → rects of the search hits on it (the server's estimate)
    this.needle = '';             // the search, folded: the text layer places its hits exactly
    this.runs = new Map();        // live page → its text runs
    this.hitPage = 0;             // the page of the current hit
    this.zoom = 'auto';
    this.scale = this.k100;
    this.current = 1;
    this.io = nearness(null, NEAR, (fig) => this.near(fig), (fig) => this.far(fig));
    this.adopt();
    let queued = false;
    window.addEventListener('scroll', () => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; this.track(); });
    }, { passive: true });
    window.addEventListener('resize', () => { if (typeof this.zoom === 'string') this.setZoom(this.zoom); });
  }

  get count() { return this.sizes.length; }

  // The server-rendered figures, taken over as they are.
  adopt() {
    this.figs = $$('figure.page', this.column);
    this.sizes = this.figs.map((f) => [Number(f.dataset.width), Number(f.dataset.height)]);
    this.figs.forEach((f) => this.io.observe(f));
  }

  /** A (new) layout: files of this attempt, every page's size. Pages beyond `ready` are placeholders. */
  setLayout(filesUrl, sizes, ready) {
    if (sizes.length !== this.figs.length) this.build(sizes);
    if (filesUrl !== this.filesUrl) {
      // Another attempt: its files have other addresses, but it kept the pages stored before it
      // (`ready` never goes back), so the pages shown stay as they are; only the rest wait for it.
      const kept = this.filesUrl ? Math.min(this.ready, ready) : 0;
      Array.from(this.live).forEach((n) => { if (n > kept) this.unload(n); });
      this.filesUrl = filesUrl;
      this.ready = kept;
      this.figs.forEach((f, i) => { if (i >= kept) this.setPending(f, true); });
    }
    this.setReady(ready);
    this.setZoom(this.zoom);
  }

  build(sizes) {
    this.io.disconnect();
    this.live.clear();
    this.column.textContent = '';
    const tpl = $('#page-template');
    sizes.forEach(([w, h], i) => {
      const n = i + 1;
      const fig = tpl.content.firstElementChild.cloneNode(true);
      fig.id = 'page-' + n;
      fig.dataset.n = String(n); fig.dataset.width = String(w); fig.dataset.height = String(h);
      fig.setAttribute('aria-labelledby', 'page-' + n + '-caption');
      $('.placeholder', fig).setAttribute('aria-label', 'Page ' + n + ', not converted yet');
      const cap = $('figcaption', fig);
      cap.id = 'page-' + n + '-caption'; cap.textContent = 'Page ' + n;
      this.column.appendChild(fig);
    });
    this.heading.firstChild.textContent = 'Pages ';
    $('.muted', this.heading).textContent = '(' + sizes.length + ')';
    this.adopt();
  }

  setPending(fig, pending) {
    const box = $('.page-box', fig);
    fig.classList.toggle('pending', pending);
    const ph = $('.placeholder', box);
    if (pending && !ph) {
      const p = make('div', 'placeholder');
      p.setAttribute('role', 'img');
      p.setAttribute('aria-label', 'Page ' + fig.dataset.n + ', not converted yet');
      box.prepend(p);
    } else if (!pending && ph) {
      ph.remove();
    }
  }

  /** Pages 1..ready are servable: fill in the ones near the viewport. */
  setReady(ready) {
    ready = Math.min(ready, this.count);
    for (let n = this.ready + 1; n <= ready; n++) {
      const fig = this.figs[n - 1];
      this.setPending(fig, false);
      if (fig.dataset.near) this.load(n);
    }
    this.ready = Math.max(this.ready, ready);
  }

  /** Forget every page's files (a new attempt has other files; a deleted document has none). */
  clear() {
    Array.from(this.live).forEach((n) => this.unload(n));
    this.figs.forEach((f) => this.setPending(f, true));
    this.ready = 0;
    this.filesUrl = null;
  }

  near(fig) {
    fig.dataset.near = '1';
    const n = Number(fig.dataset.n);
    if (n <= this.ready && this.filesUrl) this.load(n);
  }

  far(fig) {
    delete fig.dataset.near;
    this.unload(Number(fig.dataset.n));
  }

  url(kind, n, ext) { return this.filesUrl + pageFile(kind, n, ext); }

  load(n) {
    if (this.live.has(n) || !this.filesUrl) return;
    this.live.add(n);
    const fig = this.figs[n - 1];
    const [w, h] = this.sizes[n - 1];
    const img = make('img', 'page-image');
    img.alt = 'Page ' + n;
    img.width = w; img.height = h;
    img.decoding = 'async';
    img.src = this.url('page', n, 'jpg');
    // A ready page's file missing: the document changed under us (deleted, or retried elsewhere).
    img.onerror = () => { if (this.opts.onMissing) this.opts.onMissing(n); };
    $('.page-box', fig).prepend(img);
    this.sharpen(n);
    const files = this.filesUrl;
    // The layer is immutable within an attempt: let the HTTP cache keep it.
    fetch(this.url('layer', n, 'json'), { credentials: 'same-origin' })
      .then((r) => (r.ok ? r.json() : null), () => null)
      .then((layer) => {
        if (layer && this.live.has(n) && files === this.filesUrl) this.textLayer(n, layer.runs || []);
      }, () => {});
  }

  unload(n) {
    if (!this.live.delete(n)) return;
    this.runs.delete(n);
    const fig = this.figs[n - 1];
    if (!fig) return;
    $$('.page-image, .text-layer', fig).forEach((e) => e.remove());
  }

  // A sharper image for zoomed or high-density screens, when the server has one; else keep the base.
  sharpen(n) {
    if (!this.opts.hd || this.hdFailed.has(n) || !this.live.has(n)) return;
    const img = $('.page-image', this.figs[n - 1]);
    if (!img || img.dataset.hd || this.scale * (window.devicePixelRatio || 1) < HD_NEED) return;
    const hd = new Image();
    hd.onload = () => { if (img.isConnected) { img.src = hd.src; img.dataset.hd = '1'; } };
    hd.onerror = () => this.hdFailed.add(n);
    hd.src = this.url('hd', n, 'jpg');
  }

  textLayer(n, runs) {
    const [w, h] = this.sizes[n - 1];
    const layer = make('div', 'text-layer');
    runs.forEach((run, i) => {
      if (!Array.isArray(run) || run.length !== 5 || !run[4]) return;
      const [x, y, rw, rh, text] = run;
      const span = make('span', '', text);
      // Positions in % of the page and the font in % of its height (cqh): they follow the zoom.
      span.style.left = (x * 100) + '%';
      span.style.top = (y * 100) + '%';
      span.style.fontSize = (rh * 100) + 'cqh';
      const natural = textWidth(text) * rh * h;
      if (natural > 0) span.style.transform = 'scaleX(' + ((rw * w) / natural).toFixed(4) + ')';
      layer.appendChild(span);
      const next = runs[i + 1];
      // A line break where the next run starts a new line, so copied text keeps its lines.
      layer.appendChild(next && Math.abs(next[1] - y) < rh / 2 ? document.createTextNode(' ')
                                                              : document.createElement('br'));
    });
    $('.page-box', this.figs[n - 1]).appendChild(layer);
    this.runs.set(n, runs);
    if (this.hits.has(n)) this.drawHits(n);
  }

  /* ---- zoom ---- */
  fitScale(mode) {
    if (!this.count) return this.k100;
    const cs = getComputedStyle(this.column);
    const availW = Math.max(100, this.column.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight));
    const widest = Math.max(...this.sizes.map((s) => s[0]));
    const width = availW / widest;
    if (mode === 'page-width') return width;
    if (mode === 'auto') return Math.min(width, AUTO_MAX * this.k100);
    const [w, h] = this.sizes[this.current - 1] || this.sizes[0];
    const top = this.opts.toolbar ? this.opts.toolbar.offsetHeight : 0;
    const availH = Math.max(100, window.innerHeight - top - 48);  // room for the caption
    return Math.min(availW / w, availH / h);
  }

  /** Zoom: 'auto', 'page-width', 'page-fit', or a factor (1 = 100%), keeping the reading place. */
  setZoom(value) {
    const factor = typeof value === 'number' ? Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, value)) : null;
    this.zoom = factor === null ? value : factor;
    const scale = factor === null ? this.fitScale(value) : factor * this.k100;
    const anchor = this.anchor();
    this.scale = scale;
    this.figs.forEach((fig, i) => {
      const box = fig.firstElementChild;
      box.style.width = Math.round(this.sizes[i][0] * scale) + 'px';
      box.style.height = Math.round(this.sizes[i][1] * scale) + 'px';
    });
    this.column.classList.add('sized');
    if (anchor) this.restore(anchor);
    this.live.forEach((n) => this.sharpen(n));
  }

  /** The zoom as a factor of 100%, whatever the mode. */
  get factor() { return this.scale / this.k100; }

  line() {
    const top = this.opts.toolbar ? Math.max(0, this.opts.toolbar.getBoundingClientRect().bottom) : 0;
    return top + Math.min(100, (window.innerHeight - top) / 3);
  }

  // Where the reader is: the current page's box against the toolbar's bottom edge.
  anchor() {
    const fig = this.figs[this.current - 1];
    if (!fig || window.scrollY === 0) return null;
    const r = fig.firstElementChild.getBoundingClientRect();
    const top = this.opts.toolbar ? this.opts.toolbar.getBoundingClientRect().bottom : 0;
    return { fig, top, into: top - r.top, frac: r.height ? (top - r.top) / r.height : 0 };
  }

  // The same spot of the page under the toolbar again: the same share of the page once into it,
  // the same gap while the page starts below the toolbar.
  restore(a) {
    const r = a.fig.firstElementChild.getBoundingClientRect();
    const want = a.into > 0 ? a.frac * r.height : a.into;
    window.scrollBy(0, r.top + want - a.top);
  }

  /* ---- the current page ---- */
  track() {
    if (!this.count) return;
    let n;
    const doc = document.documentElement;
    if (window.scrollY > 0 && window.innerHeight + window.scrollY >= doc.scrollHeight - 2) {
      n = this.count;  // at the very end the last page is current, however short it is
    } else {
      const line = this.line();
      let lo = 0, hi = this.count - 1;
      while (lo < hi) {  // the first page whose bottom is below the reading line
        const mid = (lo + hi) >> 1;
        if (this.figs[mid].getBoundingClientRect().bottom > line) hi = mid; else lo = mid + 1;
      }
      n = lo + 1;
    }
    if (n !== this.current) {
      this.current = n;
      this.opts.onCurrent(n, false);
    }
  }

  /** Scroll page n to the top of the view. */
  goTo(n) {
    n = Math.max(1, Math.min(this.count, Math.round(n) || 1));
    const fig = this.figs[n - 1];
    if (!fig) return 0;
    fig.scrollIntoView({ block: 'start' });
    this.current = n;
    this.opts.onCurrent(n, true);
    return n;
  }

  /** Page n, scrolled so that a spot at fraction y of its height is in the upper part of the view. */
  reveal(n, y) {
    n = this.goTo(n);
    const box = n && this.figs[n - 1].firstElementChild.getBoundingClientRect();
    if (!box) return;
    const top = this.opts.toolbar ? this.opts.toolbar.getBoundingClientRect().bottom : 0;
    const spot = box.top + y * box.height;
    if (spot > top + (window.innerHeight - top) * 0.6) window.scrollBy(0, spot - top - (window.innerHeight - top) / 3);
  }

  /** The page's top or bottom is out of view: PgDn/PgUp scroll within it first. */
  overflow(dir) {
    const fig = this.figs[this.current - 1];
    if (!fig) return false;
    const box = fig.firstElementChild.getBoundingClientRect();
    const top = this.opts.toolbar ? this.opts.toolbar.getBoundingClientRect().bottom : 0;
    const room = window.innerHeight - top;
    if (dir > 0 && box.bottom > window.innerHeight + 4) {
      window.scrollBy(0, Math.min(room * 0.9, box.bottom - window.innerHeight + 8));
      return true;
    }
    if (dir < 0 && box.top < top - 4) {
      window.scrollBy(0, -Math.min(room * 0.9, top - box.top + 8));
      return true;
    }
    return false;
  }

  /* ---- search highlights ---- */
  /** Highlight the hits: `byPage` maps a page to the server's rectangles, drawn until the page's text
   *  layer is there to place them exactly; `needle` is the search; the current hit's page stands out. */
  setHits(byPage, currentPage, needle) {
    $$('.hit-layer', this.column).forEach((e) => e.remove());
    this.hits = byPage;
    this.hitPage = currentPage;
    this.needle = String(needle || '').split(/\s+/).filter(Boolean).join(' ').toLowerCase();
    byPage.forEach((_, n) => this.drawHits(n));
  }

  // Where the needle sits in the page's runs, measured like the text layer's spans.
  exactHits(n) {
    const runs = this.runs.get(n);
    if (!runs || !this.needle) return null;
    const rects = [];
    runs.forEach((run) => {
      if (!Array.isArray(run) || run.length !== 5) return;
      const [x, y, w, h, text] = run;
      const folded = String(text).toLowerCase();
      const full = textWidth(text) || 1;
      for (let at = folded.indexOf(this.needle); at >= 0; at = folded.indexOf(this.needle, at + this.needle.length)) {
        const x0 = x + w * textWidth(text.slice(0, at)) / full;
        const x1 = x + w * textWidth(text.slice(0, at + this.needle.length)) / full;
        rects.push([x0, y, x1 - x0, h]);
      }
    });
    return rects;
  }

  drawHits(n) {
    const fig = this.figs[n - 1];
    if (!fig) return;
    const old = $('.hit-layer', fig);
    if (old) old.remove();
    const exact = this.exactHits(n);
    const rects = exact && exact.length ? exact : this.hits.get(n) || [];
    if (!rects.length) return;
    const layer = make('div', 'hit-layer' + (n === this.hitPage ? ' current' : ''));
    layer.setAttribute('aria-hidden', 'true');
    rects.forEach(([x, y, w, h]) => {
      const mark = make('div', 'hit');
      mark.style.left = (x * 100) + '%'; mark.style.top = (y * 100) + '%';
      mark.style.width = (w * 100) + '%'; mark.style.height = (h * 100) + '%';
      layer.appendChild(mark);
    });
    fig.firstElementChild.appendChild(layer);
  }
}
