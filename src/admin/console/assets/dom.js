// @ts-check
/**
 * Building the page without markup: every element is made with createElement and every string —
 * above all the client-controlled ones (HELO, addresses, AUTH user names, reply texts) — goes in as
 * a text node. Nothing in the console ever assigns innerHTML, outerHTML or insertAdjacentHTML.
 */

/** Attributes the console sets; anything else (on*, style, href with a scheme…) is refused. */
const ATTRS = new Set([
  'id', 'class', 'hidden', 'type', 'name', 'value', 'placeholder', 'for', 'title', 'href', 'autocomplete',
  'required', 'disabled', 'rows', 'cols', 'spellcheck', 'role', 'aria-label', 'aria-live', 'aria-current',
  'aria-invalid', 'aria-describedby', 'colspan', 'open', 'method', 'list', 'inputmode', 'viewBox',
  'x', 'y', 'width', 'height', 'preserveAspectRatio', 'tabindex', 'data-id', 'data-testid', 'data-write',
  'data-section', 'data-field', 'data-state', 'selected', 'checked', 'readonly', 'minlength', 'maxlength',
]);

/**
 * @typedef {Node | string | number | null | undefined | false} Child
 * @typedef {Record<string, string | number | boolean | undefined | null | ((ev: any) => void)>} Props
 */

/**
 * h('tr', { class: 'row', onclick: fn }, 'text', otherNode)
 * @param {string} tag
 * @param {Props} [props]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElement}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/**
 * SVG elements (the per-minute chart): geometry as attributes, never as inline style.
 * @param {string} tag
 * @param {Props} [props]
 * @param {...(Child | Child[])} children
 * @returns {SVGElement}
 */
export function svg(tag, props = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/**
 * @param {Element} el
 * @param {Props} props
 */
function setProps(el, props) {
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
      continue;
    }
    if (!ATTRS.has(k)) throw new Error(`attribute ${k} not allowed`);
    if (typeof v === 'function') throw new Error(`attribute ${k} is not a handler`);
    if (k === 'href' && !String(v).startsWith('#')) throw new Error('only in-page links');
    el.setAttribute(k, v === true ? '' : String(v));
  }
}

/**
 * @param {Element} el
 * @param {(Child | Child[])[]} children
 */
function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

/**
 * Replace an element's children.
 * @param {Element} el
 * @param {...(Child | Child[])} children
 */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/**
 * A table: header labels, and rows of cells.
 * @param {string[]} head
 * @param {HTMLElement[]} rows
 * @param {string} [cls]
 */
export function table(head, rows, cls = '') {
  return h('div', { class: 'table-wrap' },
    h('table', { class: cls },
      h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: undefined }, t)))),
      h('tbody', {}, rows.length > 0 ? rows : h('tr', {}, h('td', { colspan: head.length, class: 'empty' }, 'nothing here'))),
    ),
  );
}

/**
 * A labelled form field, with a place for the server's error under it.
 * @param {string} label
 * @param {HTMLElement} input
 * @param {string} [hint]
 */
export function field(label, input, hint) {
  const name = input.getAttribute('name') ?? '';
  const id = input.id || `f-${name}-${Math.random().toString(36).slice(2, 8)}`;
  input.id = id;
  return h('div', { class: 'field', 'data-field': name },
    h('label', { for: id }, label),
    input,
    hint ? h('small', { class: 'hint' }, hint) : null,
    h('div', { class: 'field-error', role: 'alert' }),
  );
}

/**
 * Put the server's message on the field it names ("body/target must …", "body/value …"), or on the
 * form's general error line when it names none.
 * @param {HTMLElement} form
 * @param {string} message
 * @param {Record<string, string>} [aliases] server field name → form field name
 * @param {string} [fallback] the field when the message names none
 */
export function showError(form, message, aliases = {}, fallback) {
  clearErrors(form);
  const m = /(?:body|querystring|params)\/([A-Za-z]+)/.exec(message);
  const named = m ? aliases[m[1] ?? ''] ?? m[1] : undefined;
  /** @param {string | undefined} n */
  const find = (n) => (n ? form.querySelector(`[data-field="${CSS.escape(n)}"]`) : null);
  const box = find(named) ?? find(fallback);
  if (box) {
    box.classList.add('invalid');
    box.querySelector('input,textarea,select')?.setAttribute('aria-invalid', 'true');
    const err = box.querySelector('.field-error');
    if (err) err.textContent = message;
    return;
  }
  const general = form.querySelector('.form-error');
  if (general) general.textContent = message;
}

/** @param {HTMLElement} form */
export function clearErrors(form) {
  for (const b of form.querySelectorAll('.invalid')) b.classList.remove('invalid');
  for (const i of form.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
  for (const e of form.querySelectorAll('.field-error, .form-error')) e.textContent = '';
}

/**
 * Ask before changing anything: an in-page <dialog> (never window.confirm).
 * @param {string} title
 * @param {string} detail
 * @param {string} [action] the confirm button's label
 * @returns {Promise<boolean>}
 */
export function confirmAction(title, detail, action = 'Confirm') {
  const dlg = /** @type {HTMLDialogElement} */ (document.getElementById('confirm'));
  const ok = h('button', { type: 'button', class: 'danger', 'data-testid': 'confirm-ok' }, action);
  const cancel = h('button', { type: 'button', 'data-testid': 'confirm-cancel' }, 'Cancel');
  replace(dlg, h('h2', {}, title), h('p', {}, detail), h('div', { class: 'actions' }, cancel, ok));
  return new Promise((resolve) => {
    /** @param {boolean} v */
    const done = (v) => {
      dlg.close();
      resolve(v);
    };
    ok.addEventListener('click', () => done(true));
    cancel.addEventListener('click', () => done(false));
    dlg.addEventListener('cancel', () => resolve(false), { once: true });
    dlg.showModal();
    cancel.focus();
  });
}

/**
 * A short message at the top of the page.
 * @param {string} text
 * @param {'ok' | 'error'} [kind]
 */
export function toast(text, kind = 'ok') {
  const box = document.getElementById('toast');
  if (!box) return;
  box.className = `toast ${kind}`;
  box.textContent = text;
  box.hidden = false;
  clearTimeout(Number(box.dataset['timer'] ?? 0));
  box.dataset['timer'] = String(setTimeout(() => (box.hidden = true), 6000));
}

/** @param {string} iso */
export function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString([], { hour12: false });
}

/** @param {number} s */
export function age(s) {
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
