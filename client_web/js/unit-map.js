// The console's map of units: Leaflet (served by our own server from node_modules, never a
// CDN), on the operator's tile server when one is configured, else on a plain grid of
// latitude and longitude lines. Either way the map is Web Mercator (Leaflet's EPSG:3857), so a
// unit is drawn where it is whether or not there are tiles under it.
//
// Loaded with a dynamic import: a server without the library installed still runs the
// console, with a note where the map would be.

import { CONSOLE_TEXT as T } from './command-text.js';
import { h, setText } from './dom.js';

const LEAFLET = '/vendor/leaflet/leaflet-src.esm.js';
const DEFAULT_VIEW = { center: [-2.5, 118.0], zoom: 5 }; // Indonesia, until a unit shows up
const EMERGENCY_ZOOM = 15; // the place and the units around it (a few hundred metres)
const FIT_MAX_ZOOM = 16;
// Grid spacing in degrees: the first that gives at most about eight lines across the view.
const GRID_STEPS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30];
const GRID_LINES = 8;
const MARKER_PX = 18;

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

/** "12 s", "4 min", "2 h" */
export function ageText(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

export class UnitMap {
  constructor(container, note) {
    this.container = container;
    this.note = note;
    this.L = null;
    this.map = null;
    this.markers = new Map(); // unit -> {marker, el, label, age, key}
    this.tiles = null;
    this.available = false;
    this._grid = null;
    this._emergency = null; // layer group: the emergency's own position and accuracy
    this._emergencyKey = null;
    this._fitted = false;
  }

  /** Load the library and build the map; false when the library is not there. */
  async init({ tiles = null, attribution = null } = {}) {
    try {
      this.L = await import(LEAFLET);
    } catch {
      this.container.classList.add('is-unavailable');
      this.container.replaceChildren(h('p', { class: 'map-missing' }, T.mapNoLibrary));
      return false;
    }
    const L = this.L;
    this.tiles = tiles;
    this.map = L.map(this.container, {
      center: DEFAULT_VIEW.center, zoom: DEFAULT_VIEW.zoom, zoomSnap: 1,
      attributionControl: !!tiles, keyboard: true,
    });
    if (tiles) {
      // The attribution is the operator's text: shown as text, never as markup.
      L.tileLayer(tiles, { maxZoom: 19, attribution: attribution ? escapeHtml(attribution) : '' }).addTo(this.map);
      setText(this.note, '');
    } else {
      this.container.classList.add('is-grid');
      this._grid = L.layerGroup().addTo(this.map);
      this.map.on('moveend zoomend resize', () => this._drawGrid());
      this._drawGrid();
      setText(this.note, T.mapNoTiles);
    }
    this._emergency = L.layerGroup().addTo(this.map);
    this.available = true;
    return true;
  }

  _drawGrid() {
    const L = this.L;
    const b = this.map.getBounds();
    const span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
    const step = GRID_STEPS.find((s) => span / s <= GRID_LINES) || 30;
    this._grid.clearLayers();
    const south = Math.max(-85, Math.floor(b.getSouth() / step) * step);
    const north = Math.min(85, Math.ceil(b.getNorth() / step) * step);
    const west = Math.floor(b.getWest() / step) * step;
    const east = Math.ceil(b.getEast() / step) * step;
    const style = { className: 'map-grid-line', interactive: false, weight: 1 };
    for (let lat = south; lat <= north + 1e-9; lat += step) {
      this._grid.addLayer(L.polyline([[lat, west], [lat, east]], style));
    }
    for (let lon = west; lon <= east + 1e-9; lon += step) {
      this._grid.addLayer(L.polyline([[south, lon], [north, lon]], style));
    }
  }

  /**
   * Draw `units` ([{unit, alias, talkgroups, lat, lon, accuracy, received, talking,
   * emergency}]) as they are now; `now` in Unix seconds.
   */
  update(units, now) {
    if (!this.available) return;
    const L = this.L;
    const seen = new Set();
    for (const u of units) {
      seen.add(u.unit);
      let m = this.markers.get(u.unit);
      const cls = `unit-marker${u.talking ? ' is-talking' : ''}${u.emergency ? ' is-emergency' : ''}`;
      const key = [cls, u.alias, (u.talkgroups || []).join(',')].join('|');
      if (!m) {
        m = { marker: null, el: null, label: null, age: null, key: null };
        m.marker = L.marker([u.lat, u.lon], { keyboard: false, riseOnHover: true }).addTo(this.map);
        this.markers.set(u.unit, m);
      } else {
        m.marker.setLatLng([u.lat, u.lon]);
      }
      if (m.key !== key) {
        m.key = key;
        m.age = h('span', { class: 'unit-age' });
        m.label = h('span', { class: 'unit-label' },
          h('strong', {}, u.alias || u.unit),
          h('span', { class: 'unit-tgs' }, (u.talkgroups || []).join(' · ')),
          u.talking ? h('span', { class: 'unit-state' }, T.talking) : null,
          u.emergency ? h('span', { class: 'unit-state unit-state-emergency' }, T.emergency) : null,
          m.age);
        const dot = h('span', { class: 'unit-dot', 'aria-hidden': 'true' });
        m.marker.setIcon(L.divIcon({
          className: cls, html: h('div', { class: 'unit-icon' }, dot, m.label),
          iconSize: [MARKER_PX, MARKER_PX], iconAnchor: [MARKER_PX / 2, MARKER_PX / 2],
        }));
        m.marker.setZIndexOffset(u.emergency ? 1000 : u.talking ? 500 : 0);
        m.el = m.marker.getElement();
        if (m.el) {
          m.el.dataset.unit = u.unit;
          m.el.setAttribute('title', `${u.alias || u.unit} (${u.unit})`);
        }
      }
      const age = now - (u.received || now);
      setText(m.age, age < 5 ? T.seenNow : T.seen(ageText(age)));
    }
    for (const [unit, m] of this.markers) {
      if (!seen.has(unit)) {
        m.marker.remove();
        this.markers.delete(unit);
      }
    }
    if (!this._fitted && units.length) {
      this._fitted = true;
      this.fit(units);
    }
  }

  /** Show every unit. */
  fit(units) {
    if (!this.available || !units.length) return;
    const bounds = this.L.latLngBounds(units.map((u) => [u.lat, u.lon]));
    this.map.fitBounds(bounds, { padding: [40, 40], maxZoom: FIT_MAX_ZOOM, animate: false });
  }

  /** Centre on a place (an emergency, a unit). */
  focus(lat, lon, zoom = EMERGENCY_ZOOM) {
    if (!this.available) return;
    this._fitted = true; // the operator's view from now on, not the automatic fit
    this.map.setView([lat, lon], zoom, { animate: false });
  }

  /** The emergency's own position (where the alarm was raised), or none. */
  showEmergency(alert) {
    if (!this.available) return;
    const loc = alert && alert.location;
    const key = loc ? `${alert.talkgroup}|${alert.ts}|${loc.lat}|${loc.lon}` : null;
    if (key === this._emergencyKey) return;
    this._emergencyKey = key;
    this._emergency.clearLayers();
    if (!loc) return;
    const L = this.L;
    if (loc.accuracy) {
      this._emergency.addLayer(L.circle([loc.lat, loc.lon], {
        radius: loc.accuracy, className: 'emergency-accuracy', interactive: false,
      }));
    }
    const marker = L.marker([loc.lat, loc.lon], {
      keyboard: false, zIndexOffset: 2000,
      icon: L.divIcon({
        className: 'emergency-marker', iconSize: [28, 28], iconAnchor: [14, 14],
        html: h('div', { class: 'emergency-icon', title: T.mapEmergencyPlace(alert.alias || alert.unit) }, '!'),
      }),
    });
    this._emergency.addLayer(marker);
    const el = marker.getElement();
    if (el) el.dataset.talkgroup = alert.talkgroup;
  }

  /** After a language switch: the note and every label again, in the new language. */
  relabel() {
    if (!this.available) {
      const missing = this.container.querySelector('.map-missing');
      if (missing) setText(missing, T.mapNoLibrary);
      return;
    }
    setText(this.note, this.tiles ? '' : T.mapNoTiles);
    for (const m of this.markers.values()) m.key = null; // rebuilt at the next update()
    this._emergencyKey = null;
  }

  /** Where things are on screen, for tests and diagnostics. */
  state() {
    if (!this.available) return { available: false };
    const c = this.map.getCenter();
    const size = this.map.getSize();
    return {
      available: true, tiles: this.tiles, zoom: this.map.getZoom(),
      center: { lat: c.lat, lon: c.lng }, size: { x: size.x, y: size.y },
      units: Array.from(this.markers.keys()),
    };
  }
}
