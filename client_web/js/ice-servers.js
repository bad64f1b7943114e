// TURN servers for the page's RTCPeerConnection (GET /api/ice-servers).
//
// A phone on a network that passes no UDP to the server (guest Wi-Fi, a hotel, a strict
// carrier NAT) can still reach a TURN server on a known port and have its audio relayed
// (RFC 8656). The server mints time-limited credentials for the signed-in user (the TURN REST
// API scheme: username "<expiry>:<user>", password an HMAC of it), so they are fetched, not
// configured, and fetched again before they expire.
//
// Never throws: without an answer the page connects as before, directly, which works on every
// network that lets UDP through.

import { api } from './auth.js';

// Fetch again this long before the credentials expire: a peer connection made now must still
// be able to refresh its TURN allocation for a while (RFC 8656 section 7).
const RENEW_BEFORE_S = 600;

let cached = null; // { servers, expiresAt } (epoch seconds)

/**
 * The `iceServers` for `new RTCPeerConnection({ iceServers })`: TURN with fresh credentials,
 * or [] when the server has no TURN or cannot be asked.
 */
export async function iceServers() {
  const now = Date.now() / 1000;
  if (cached && (cached.expiresAt === null || cached.expiresAt - RENEW_BEFORE_S > now)) {
    return cached.servers;
  }
  try {
    const body = await api('/api/ice-servers');
    const servers = Array.isArray(body && body.iceServers) ? body.iceServers : [];
    cached = { servers, expiresAt: typeof body.expires_at === 'number' ? body.expires_at : null };
    return servers;
  } catch (err) {
    console.warn('ice servers:', err);
    return cached && cached.expiresAt !== null && cached.expiresAt > now ? cached.servers : [];
  }
}

/** Forget the credentials (sign-out: they name the user). */
export function forgetIceServers() {
  cached = null;
}
