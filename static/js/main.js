/* The one module every page loads; it starts the module for what this page holds.
 * Static imports, not import(): the whole graph runs before DOMContentLoaded, so a form is never
 * submitted (or a link followed) before its handler is there. */
import * as admin from './admin.js';
import * as list from './list.js';
import * as viewer from './viewer.js';

const PAGES = [['#viewer', viewer], ['#doc-page', list], ['#stats[data-stats-url]', admin]];

for (const [selector, module] of PAGES) {
  const root = document.querySelector(selector);
  if (root) module.init(root);
}
