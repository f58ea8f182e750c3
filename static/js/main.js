/* The one module every page loads: it imports the module for what this page holds. */
const PAGES = [['#viewer', './viewer.js'], ['#doc-page', './list.js'], ['#stats[data-stats-url]', './admin.js']];

for (const [selector, module] of PAGES) {
  const root = document.querySelector(selector);
  if (root) import(module).then((m) => m.init(root));
}
