/* Formatting shared by every page: the progress label is written here and nowhere else. */

export const isTerminal = (p) => !!p && (p.state === 'complete' || p.state === 'failed');
export const clampPct = (n) => Math.max(0, Math.min(100, Math.round(Number(n) || 0)));
export const capitalize = (s) => (s ? s.charAt(0).toUpperCase() + s.slice(1).toLowerCase() : '');
export const errorText = (p) => (p.error && p.error.message) || p.message || '';
export const plural = (n, one, many) => n + ' ' + (n === 1 ? one : many || one + 's');
export const isDeleted = (p) => !!(p && p.error && p.error.code === 'deleted');

/** "Stage page i of n": what the conversion is doing, for the bar, the list and announcements. */
export function stageLabel(p) {
  return capitalize(p.stage) + (p.pages ? ' page ' + p.page + ' of ' + p.pages : '');
}

/** "Stage page i of n, p%": the progress bar's spoken value. */
export function progressLabel(p) {
  return stageLabel(p) + ', ' + clampPct(p.percent) + '%';
}

const SIZE_UNITS = ['kB', 'MB', 'GB', 'TB'];

/** Jinja's filesizeformat, so a row added by script reads like the server-rendered ones. */
export function fileSize(n) {
  if (n < 1000) return n + (n === 1 ? ' Byte' : ' Bytes');
  let i = 0;
  while (i < SIZE_UNITS.length - 1 && n >= Math.pow(1000, i + 2)) i++;
  return (n / Math.pow(1000, i + 1)).toFixed(1) + ' ' + SIZE_UNITS[i];
}

/** A page file's name: `page-0007.jpg`, `layer-0007.json` (the server's %04d names). */
export const pageFile = (kind, n, ext) => kind + '-' + String(n).padStart(4, '0') + '.' + ext;
