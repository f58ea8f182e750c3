/* A yes/no question in the page's one <dialog>: resolves true only for the confirming button. */
import { $ } from './net.js';

export function confirmAction({ title, text, confirm }) {
  const dialog = $('#confirm-dialog');
  if (!dialog || typeof dialog.showModal !== 'function') return Promise.resolve(window.confirm(title));
  $('#confirm-title', dialog).textContent = title;
  $('#confirm-text', dialog).textContent = text;
  $('#confirm-ok', dialog).textContent = confirm;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    // Escape closes the dialog with an empty returnValue: a "no".
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
  });
}
