// Translations: t(key, params) from the catalogues in /i18n/<lang>.json.
//
// Officers in Indonesia read Bahasa Indonesia first; English is the fallback for every key,
// so a key missing from one catalogue shows English rather than a key name. The language
// comes from the browser (navigator.languages) until someone picks one on a page; the pick is
// remembered on this device. Markup is translated by attribute:
//   <span data-i18n="officer.talk">Talk</span>             (text content)
//   <input data-i18n-attr="placeholder:search.hint;aria-label:search.label">
// The module loads its catalogues before anything that imports it runs (top-level await), so
// t() is synchronous everywhere.

export const LANGUAGES = { id: 'Bahasa Indonesia', en: 'English' };
const STORE_KEY = 'ptt.lang';
export const CHANGE_EVENT = 'ptt-language';

const catalogues = {};
let current = 'en';

/** The language from the browser: id / id-ID (or any id-*) is Indonesian, anything else English. */
export function browserLanguage(list = navigator.languages || [navigator.language]) {
  for (const tag of list) {
    const base = String(tag || '').toLowerCase().split('-')[0];
    if (base in LANGUAGES) return base;
  }
  return 'en';
}

function chosen() {
  try {
    const saved = localStorage.getItem(STORE_KEY);
    if (saved && saved in LANGUAGES) return saved;
  } catch { /* storage blocked: follow the browser */ }
  return browserLanguage();
}

async function load(lang) {
  if (catalogues[lang]) return catalogues[lang];
  try {
    const resp = await fetch(`/i18n/${lang}.json`);
    catalogues[lang] = resp.ok ? await resp.json() : {};
  } catch {
    catalogues[lang] = {}; // offline and not cached: English keys' fallbacks still show
  }
  return catalogues[lang];
}

export function language() { return current; }

export function has(key) {
  return key in (catalogues[current] || {}) || key in (catalogues.en || {});
}

/** The text for `key` with {name} placeholders filled from `params`. */
export function t(key, params = {}) {
  const text = (catalogues[current] || {})[key] ?? (catalogues.en || {})[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** A human text for a server error `code` (never the server's own text, which is English and
 * technical); `fallbackKey` when the code is unknown to us. */
export function errorText(code, fallbackKey = 'error.unknown', params = {}) {
  return code && has(`error.${code}`) ? t(`error.${code}`, params) : t(fallbackKey, params);
}

/** Translate the data-i18n / data-i18n-attr markup under `root`. */
export function apply(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
  document.documentElement.lang = current;
  for (const select of root.querySelectorAll('select[data-language]')) select.value = current;
}

/** Switch language, remember it, re-translate the markup and tell the page (CHANGE_EVENT on
 * window) so it re-renders what its script wrote. */
export async function setLanguage(lang) {
  if (!(lang in LANGUAGES)) return;
  await load(lang);
  current = lang;
  try { localStorage.setItem(STORE_KEY, lang); } catch { /* not remembered, still switched */ }
  apply();
  window.dispatchEvent(new CustomEvent(CHANGE_EVENT, { detail: { lang } }));
}

/** Fill every <select data-language> with the languages and switch on change. */
function bindSelectors() {
  for (const select of document.querySelectorAll('select[data-language]')) {
    if (select.dataset.bound) continue;
    select.dataset.bound = '1';
    select.replaceChildren(...Object.entries(LANGUAGES).map(([code, name]) => {
      const opt = document.createElement('option');
      opt.value = code;
      opt.lang = code;
      opt.textContent = name;
      return opt;
    }));
    select.value = current;
    select.addEventListener('change', () => setLanguage(select.value));
  }
}

current = chosen();
await Promise.all([load('en'), current === 'en' ? null : load(current)]);
apply();
bindSelectors();
