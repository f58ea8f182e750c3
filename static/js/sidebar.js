/* The sidebar: page thumbnails (lazy), the outline (a collapsible tree), the list of matches;
 * tabs between them; open beside the pages on wide screens, over them on a phone. */
import { pageFile } from './format.js';
import { $, $$, make } from './net.js';
import { nearness } from './lazy.js';

const WIDE = '(min-width: 900px)';

export class Sidebar {
  /** opts: {toggle (button), onClose()} */
  constructor(aside, opts) {
    this.aside = aside;
    this.opts = opts;
    this.toggle = opts.toggle;
    this.tabs = $$('[role="tab"]', aside);
    this.thumbs = $('#thumbs', aside);
    this.panel = $('#panel-thumbs', aside);
    this.filesUrl = null;
    this.ready = 0;
    this.links = [];
    this.io = nearness(this.panel, '300px 0px', (a) => this.near(a), (a) => this.far(a));
    this.wide = window.matchMedia(WIDE);
    this.aside.hidden = false;
    this.setOpen(this.wide.matches);
    this.toggle.addEventListener('click', () => this.setOpen(!this.isOpen));
    this.wide.addEventListener('change', (e) => this.setOpen(e.matches));
    // Over the pages, Escape closes it (and focus goes back to its button).
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && this.overlay && !ev.defaultPrevented && !document.querySelector('dialog[open]')) {
        this.setOpen(false);
        this.toggle.focus();
      }
    });
    this.tabs.forEach((tab) => tab.addEventListener('click', () => this.show(tab.id)));
    // Arrow keys move between tabs (the tablist is one Tab stop), as the ARIA pattern has it.
    $('[role="tablist"]', aside).addEventListener('keydown', (ev) => {
      const shown = this.tabs.filter((t) => !t.hidden);
      const i = shown.indexOf(document.activeElement);
      if (i < 0) return;
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[ev.key];
      let j = null;
      if (step) j = (i + step + shown.length) % shown.length;
      else if (ev.key === 'Home') j = 0;
      else if (ev.key === 'End') j = shown.length - 1;
      if (j === null) return;
      ev.preventDefault();
      this.show(shown[j].id);
      shown[j].focus();
    });
  }

  get isOpen() { return this.toggle.getAttribute('aria-expanded') === 'true'; }

  // Narrow screens: the open sidebar lies over the pages.
  get overlay() { return this.isOpen && !this.wide.matches; }

  setOpen(open) {
    if (open && !this.wide.matches) {
      // Over the pages it hangs from the toolbar: bring the toolbar to the top (where it sticks) first.
      const top = this.toggle.closest('.viewer-toolbar').getBoundingClientRect().top;
      if (top > 0) window.scrollBy(0, top);
    }
    this.toggle.setAttribute('aria-expanded', String(open));
    this.aside.classList.toggle('open', open);
    document.body.classList.toggle('sidebar-open', open);
    if (open) this.revealCurrent();
    if (!open && this.opts.onClose) this.opts.onClose();
  }

  /** Show the tab with this id (and open the sidebar). */
  show(tabId, open) {
    this.tabs.forEach((t) => {
      const on = t.id === tabId;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $('#' + t.getAttribute('aria-controls')).hidden = !on;
    });
    if (open && !this.isOpen) this.setOpen(true);
    this.revealCurrent();
  }

  /** After a jump from the sidebar: on a phone it gets out of the way. */
  chosen() { if (this.overlay) this.setOpen(false); }

  /* ---- thumbnails: one link per page; images only for ready pages scrolled near ---- */
  setPages(filesUrl, sizes) {
    const rebuild = sizes.length !== this.links.length;
    if (filesUrl !== this.filesUrl) {
      // Another attempt's files: the thumbnails shown are the same pages (an attempt keeps the pages
      // stored before it), so they stay; those not shown yet load from the new address. No files
      // (deleted, or an attempt that kept nothing): every thumbnail goes.
      if (!filesUrl) {
        this.links.forEach((a) => {
          const img = $('img', a);
          if (img) img.remove();
          a.classList.remove('ready');
        });
        this.ready = 0;
      }
      this.filesUrl = filesUrl;
    }
    if (!rebuild) return;
    this.io.disconnect();
    this.thumbs.textContent = '';
    this.links = sizes.map(([w, h], i) => {
      const n = i + 1;
      const a = make('a', 'thumb');
      a.href = '#page=' + n;
      a.dataset.n = String(n);
      const box = make('span', 'thumb-box');
      box.style.aspectRatio = w + ' / ' + h;
      a.append(box, make('span', 'thumb-n', n));
      a.setAttribute('aria-label', 'Page ' + n);
      this.thumbs.appendChild(make('li')).appendChild(a);
      this.io.observe(a);
      return a;
    });
  }

  setReady(ready) {
    for (let n = this.ready + 1; n <= Math.min(ready, this.links.length); n++) {
      const a = this.links[n - 1];
      a.classList.add('ready');
      if (a.dataset.near) this.load(a);
    }
    this.ready = Math.max(this.ready, ready);
  }

  near(a) { a.dataset.near = '1'; if (Number(a.dataset.n) <= this.ready) this.load(a); }

  far(a) {
    delete a.dataset.near;
    const img = $('img', a);
    if (img) img.remove();
  }

  load(a) {
    if (!this.filesUrl || $('img', a)) return;
    const img = make('img');
    img.alt = '';  // the link says "Page n"
    img.decoding = 'async';
    img.src = this.filesUrl + pageFile('thumb', Number(a.dataset.n), 'jpg');
    $('.thumb-box', a).appendChild(img);
  }

  setCurrent(n) {
    const was = $('[aria-current]', this.thumbs);
    if (was) was.removeAttribute('aria-current');
    this.current = n;
    const a = this.links[n - 1];
    if (a) a.setAttribute('aria-current', 'page');
    this.revealCurrent();
  }

  // Keep the current thumbnail in the panel's view, scrolling the panel only (never the window).
  revealCurrent() {
    const a = this.links[(this.current || 1) - 1];
    const p = this.panel;
    if (!a || p.hidden || !this.isOpen) return;
    const top = a.offsetTop - p.offsetTop;
    if (top < p.scrollTop || top + a.offsetHeight > p.scrollTop + p.clientHeight) {
      p.scrollTop = top - p.clientHeight / 3;
    }
  }

  /* ---- outline: nested lists; an entry with children has a button that shows or hides them ---- */
  setOutline(items) {
    const nav = $('#outline', this.aside);
    const tab = $('#tab-outline', this.aside);
    nav.textContent = '';
    tab.hidden = !items.length;
    if (!items.length) return;
    let count = 0;
    const tree = (list, depth) => {
      const ul = make('ul', depth ? 'outline-children' : 'outline-tree');
      list.forEach((item) => {
        const li = make('li');
        const row = li.appendChild(make('div', 'outline-row'));
        const kids = item.children || [];
        let sub = null;
        if (kids.length) {
          sub = tree(kids, depth + 1);
          sub.id = 'outline-' + (++count);
          sub.hidden = true;
          const b = make('button', 'twisty');
          b.type = 'button';
          b.setAttribute('aria-expanded', 'false');
          b.setAttribute('aria-controls', sub.id);
          b.setAttribute('aria-label', (item.title || 'Untitled') + ': show sections');
          b.appendChild(make('span', '', '▸')).setAttribute('aria-hidden', 'true');
          b.addEventListener('click', () => {
            const open = b.getAttribute('aria-expanded') !== 'true';
            b.setAttribute('aria-expanded', String(open));
            b.setAttribute('aria-label', (item.title || 'Untitled') + (open ? ': hide sections' : ': show sections'));
            sub.hidden = !open;
          });
          row.appendChild(b);
        } else {
          row.appendChild(make('span', 'twisty-space')).setAttribute('aria-hidden', 'true');
        }
        if (item.page) {
          const a = make('a', 'outline-link', item.title || 'Untitled');
          a.href = '#page=' + item.page;
          row.appendChild(a);
          row.appendChild(make('span', 'outline-page muted', item.page)).setAttribute('aria-hidden', 'true');
        } else {
          row.appendChild(make('span', 'outline-link', item.title || 'Untitled'));
        }
        if (sub) li.appendChild(sub);
        ul.appendChild(li);
      });
      return ul;
    };
    nav.appendChild(tree(items, 0));
  }
}
