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
    this.hitNth = 0;              // which of that page's hits it is
    this.zoom = 'auto';
    this.scale = this.k100;
    this.current = 1;
    // The pages scroll in their own box (the section) once the script sizes them; without it, the window.
    this.scroller = section;
    this.io = nearness(section, NEAR, (fig) => this.near(fig), (fig) => this.far(fig));
    this.adopt();
    let queued = false;
    const onScroll = () => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; this.track(); });
    };
    // Only a scroll of the pages raises them: the reader may scroll the window back up to the header.
    section.addEventListener('scroll', () => { this.raise(); onScroll(); }, { passive: true });
    window.addEventListener('scroll', onScroll, { passive: true });
    window.addEventListener('resize', () => { if (typeof this.zoom === 'string') this.setZoom(this.zoom); });
    this.column.addEventListener('mousedown', (ev) => this.marginDrag(ev));
    document.addEventListener('keydown', (ev) => this.selectAll(ev));
    document.addEventListener('keydown', (ev) => this.scrollKeys(ev));
  }

  // The arrows and Space scroll the pages when no control has the focus: the browser would scroll
  // the window, which holds only the header above the pages' own box.
  scrollKeys(ev) {
    if (ev.defaultPrevented || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.target !== document.body && ev.target !== document.documentElement) return;
    const step = 40;
    const screen = this.scroller.clientHeight * 0.9;
    const by = { ArrowDown: [0, step], ArrowUp: [0, -step], ArrowRight: [step, 0], ArrowLeft: [-step, 0],
                 ' ': [0, ev.shiftKey ? -screen : screen] }[ev.key];
    if (!by) return;
    ev.preventDefault();
    this.scroller.scrollBy(by[0], by[1]);
  }

  /* ---- selection ---- */
  // Ctrl+A in the document selects the pages' text (of the pages that hold a text layer now), as
  // PDF.js does, not every control of the reader; in a form field it stays the field's own.
  selectAll(ev) {
    if ((ev.key !== 'a' && ev.key !== 'A') || !(ev.ctrlKey || ev.metaKey) || ev.altKey || ev.shiftKey) return;
    if (ev.target.closest && ev.target.closest('input, textarea, select, [contenteditable], dialog')) return;
    const layers = $$('.text-layer', this.column);
    if (!layers.length) return;
    ev.preventDefault();
    const last = layers[layers.length - 1];
    const range = document.createRange();
    range.setStart(layers[0], 0);
    range.setEnd(last, last.childNodes.length);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // A drag that starts beside the text (in a page's margin, between lines) selects from the nearest
  // place in the text: the spans are positioned out of the flow, so the browser would find none.
  marginDrag(ev) {
    if (ev.button !== 0 || ev.detail > 1 || ev.target.closest('.text-layer span')) return;
    const box = ev.target.closest('.page-box');
    const start = box && this.caretNear(box, ev.clientX, ev.clientY);
    if (!start) return;
    ev.preventDefault();
    const sel = window.getSelection();
    if (ev.shiftKey && sel.rangeCount) sel.extend(start.node, start.offset);
    else sel.collapse(start.node, start.offset);
    const move = (e) => {
      const under = document.elementFromPoint(e.clientX, e.clientY);
      const to = this.caretNear((under && under.closest('.page-box')) || box, e.clientX, e.clientY);
      if (to) sel.extend(to.node, to.offset);
    };
    const up = () => {
      window.removeEventListener('mousemove', move);
      window.removeEventListener('mouseup', up);
    };
    window.addEventListener('mousemove', move);
    window.addEventListener('mouseup', up);
  }

  // The place in a page's text nearest a point: the nearest line first, then the nearest run on it.
  caretNear(box, x, y) {
    let best = null;
    let bestD = Infinity;
    $$('.text-layer span', box).forEach((span) => {
      const r = span.getBoundingClientRect();
      const dy = y < r.top ? r.top - y : Math.max(0, y - r.bottom);
      const dx = x < r.left ? r.left - x : Math.max(0, x - r.right);
      const d = dy * 1e4 + dx;
      if (d < bestD && span.firstChild) { bestD = d; best = { node: span.firstChild, r }; }
    });
    if (!best) return null;
    const { node, r } = best;
    if (x <= r.left) return { node, offset: 0 };
    if (x >= r.right) return { node, offset: node.length };
    const cy = Math.min(Math.max(y, r.top + 1), r.bottom - 1);
    const pos = document.caretPositionFromPoint ? document.caretPositionFromPoint(x, cy) : null;
    if (pos && pos.offsetNode === node) return { node, offset: pos.offset };
    return { node, offset: Math.round(node.length * (x - r.left) / r.width) };
  }

  get count() { return this.sizes.length; }

  // The part of the window the pages are seen in: their box's top and bottom edges.
  view() {
    const r = this.scroller.getBoundingClientRect();
    return { top: Math.max(0, r.top), bottom: Math.min(window.innerHeight, r.bottom) };
  }

  // Reading down the pages takes the whole window: the header above the toolbar scrolls away first,
  // else a wheel over the pages would scroll them inside a box partly below the window.
  raise() {
    if (this.scroller.scrollTop <= 0 || !this.opts.toolbar) return;
    const top = this.opts.toolbar.getBoundingClientRect().top;
    if (top > 0) window.scrollBy(0, top);
  }

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
    this.section.dataset.ready = String(this.ready);
  }

  /** Forget every page's files (a new attempt has other files; a deleted document has none). */
  clear() {
    Array.from(this.live).forEach((n) => this.unload(n));
    this.figs.forEach((f) => this.setPending(f, true));
    this.ready = 0;
    this.section.dataset.ready = '0';
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
      const [x, y, rw, rh, whole] = run;
      // A run that ends inside a word (a soft hyphen at the line's end) goes on in the next run.
      const cut = whole.endsWith('\u00ad');
      const text = cut ? whole.slice(0, -1) : whole;
      const span = make('span', '', text);
      // Positions in % of the page and the font in % of its height (cqh): they follow the zoom.
      span.style.left = (x * 100) + '%';
      span.style.top = (y * 100) + '%';
      span.style.fontSize = (rh * 100) + 'cqh';
      const natural = textWidth(text) * rh * h;
      if (natural > 0) span.style.transform = 'scaleX(' + ((rw * w) / natural).toFixed(4) + ')';
      layer.appendChild(span);
      const next = runs[i + 1];
      if (cut && next) return;
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
    // Less room for the caption.
    const availH = Math.max(100, Math.min(window.innerHeight - top, this.scroller.clientHeight) - 48);
    return Math.min(availW / w, availH / h);
  }

  /** Zoom: 'auto', 'page-width', 'page-fit', or a factor (1 = 100%), keeping the reading place. */
  setZoom(value) {
    const factor = typeof value === 'number' ? Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, value)) : null;
    this.zoom = factor === null ? value : factor;
    const scale = factor === null ? this.fitScale(value) : factor * this.k100;
    const anchor = this.anchor();
    const s = this.scroller;
    const across = s.scrollWidth > s.clientWidth ? (s.scrollLeft + s.clientWidth / 2) / s.scrollWidth : 0.5;
    this.scale = scale;
    this.figs.forEach((fig, i) => {
      const box = fig.firstElementChild;
      box.style.width = Math.round(this.sizes[i][0] * scale) + 'px';
      box.style.height = Math.round(this.sizes[i][1] * scale) + 'px';
    });
    this.column.classList.add('sized');
    if (anchor) this.restore(anchor);
    // The same spot across the page stays in the middle of the view (the middle, at first).
    s.scrollLeft = across * s.scrollWidth - s.clientWidth / 2;
    this.live.forEach((n) => this.sharpen(n));
  }

  /** The zoom as a factor of 100%, whatever the mode. */
  get factor() { return this.scale / this.k100; }

  line() {
    const { top, bottom } = this.view();
    return top + Math.min(100, (bottom - top) / 3);
  }

  // Where the reader is: the current page's box against the toolbar's bottom edge.
  anchor() {
    const fig = this.figs[this.current - 1];
    if (!fig || (this.scroller.scrollTop === 0 && window.scrollY === 0)) return null;
    const r = fig.firstElementChild.getBoundingClientRect();
    const top = this.view().top;
    return { fig, top, into: top - r.top, frac: r.height ? (top - r.top) / r.height : 0 };
  }

  // The same spot of the page under the toolbar again: the same share of the page once into it,
  // the same gap while the page starts below the toolbar.
  restore(a) {
    const r = a.fig.firstElementChild.getBoundingClientRect();
    const want = a.into > 0 ? a.frac * r.height : a.into;
    this.scroller.scrollBy(0, r.top + want - a.top);
  }

  /* ---- the current page ---- */
  track() {
    if (!this.count) return;
    let n;
    const s = this.scroller;
    if (s.scrollTop > 0 && s.clientHeight + s.scrollTop >= s.scrollHeight - 2) {
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
    const { top, bottom } = this.view();
    const spot = box.top + y * box.height;
    if (spot > top + (bottom - top) * 0.6) this.scroller.scrollBy(0, spot - top - (bottom - top) / 3);
  }

  /** The page's top or bottom is out of view: PgDn/PgUp scroll within it first. */
  overflow(dir) {
    const fig = this.figs[this.current - 1];
    if (!fig) return false;
    const box = fig.firstElementChild.getBoundingClientRect();
    const { top, bottom } = this.view();
    const room = bottom - top;
    if (dir > 0 && box.bottom > bottom + 4) {
      this.scroller.scrollBy(0, Math.min(room * 0.9, box.bottom - bottom + 8));
      return true;
    }
    if (dir < 0 && box.top < top - 4) {
      this.scroller.scrollBy(0, -Math.min(room * 0.9, top - box.top + 8));
      return true;
    }
    return false;
  }

  /* ---- search highlights ---- */
  /** Highlight the hits: `byPage` maps a page to the server's rectangles, drawn until the page's text
   *  layer is there to place them exactly; `needle` is the search; the `nth` hit (from 0) of page
   *  `currentPage` is the current match and stands out from the others, as PDF.js's selected match. */
  setHits(byPage, currentPage, needle, nth = 0) {
    $$('.hit-layer', this.column).forEach((e) => e.remove());
    this.hits = byPage;
    this.hitPage = currentPage;
    this.hitNth = nth;
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
    rects.forEach(([x, y, w, h], i) => {
      const mark = make('div', n === this.hitPage && i === this.hitNth ? 'hit current' : 'hit');
      mark.style.left = (x * 100) + '%'; mark.style.top = (y * 100) + '%';
      mark.style.width = (w * 100) + '%'; mark.style.height = (h * 100) + '%';
      layer.appendChild(mark);
    });
    fig.firstElementChild.appendChild(layer);
  }
}
