// What the command-centre features say, one object per page (the console, the officer's
// radio), so that a translation pass can lift them in one place. Functions take the parts
// that vary; nothing here builds HTML. The console's texts come from the catalogues
// (i18n.js, keys console.*): each is looked up when it is read, so a page that re-renders
// after a language switch shows the new language.

import { t } from './i18n.js';

// Why a transmission ended (the ledger's end_reason, floor_idle's reason), for the auditor's
// table and the console's logs.
export const END_REASONS = {
  released: 'audit.end_released', timeout: 'audit.end_timeout', revoked: 'audit.end_revoked',
  preempted: 'audit.end_preempted', disconnected: 'audit.end_disconnected',
  server_stopped: 'audit.end_server_stopped', left: 'audit.end_left', incomplete: 'audit.end_incomplete',
  service_interrupted: 'audit.end_service_interrupted',
};

/** The words for an end reason (the code itself when it is a new one). */
export function endReasonText(reason) {
  return END_REASONS[reason] ? t(END_REASONS[reason]) : reason;
}

export const CONSOLE_TEXT = {
  get mapNoTiles() { return t('console.map_no_tiles'); },
  get mapNoLibrary() { return t('console.map_no_library'); },
  get mapEmpty() { return t('console.map_empty'); },
  mapUnits: (n) => (n === 1 ? t('console.map_units_one') : t('console.map_units', { n })),
  mapEmergencyPlace: (who) => t('console.map_emergency_place', { who }),
  seen: (age) => t('console.seen', { age }),
  get seenNow() { return t('console.seen_now'); },
  get talking() { return t('console.talking'); },
  get emergency() { return t('emergency.title'); },
  accuracy: (m) => t('console.accuracy', { m }),
  get noLocation() { return t('console.no_location'); },
  onMap: (acc) => (acc ? t('console.on_map_accuracy', { acc }) : t('console.on_map')),
  get showOnMap() { return t('console.show_on_map'); },
  get acknowledge() { return t('console.acknowledge'); },
  acknowledgeLabel: (who) => t('console.acknowledge_label', { who }),
  acknowledged: (by, at) => (at ? t('console.acknowledged_at', { by, at }) : t('console.acknowledged', { by })),
  get panelTalk() { return t('officer.talk'); },
  panelTalkLabel: (tg) => t('console.panel_talk_label', { tg }),
  panelTalkKey: (key) => t('console.panel_talk_key', { key }),
  get panelOnAir() { return t('ptt.on_air'); },
  get panelWait() { return t('ptt.wait'); },
  panelQueued: (pos) => t('console.panel_queued', { pos }),
  get panelListenOnly() { return t('console.panel_listen_only'); },
  cutsOff: (names) => t('console.cuts_off', { names }),
  mayCutOff: (name) => t('console.may_cut_off', { name }),
  willQueue: (name) => t('console.will_queue', { name }),
  allCallCutsOff: (list) => t('console.allcall_cuts_off', { list }),
  allCallRefused: (list) => t('console.allcall_will_be_refused', { list }),
  talkerOn: (who, tg) => t('console.talker_on', { who, tg }),
};

// The officer page's location sharing and "Control acknowledged" (officer-command.js).
export const OFFICER_TEXT = {
  get shareOff() { return t('officer.share_off'); },
  get shareWaiting() { return t('officer.share_waiting'); },
  shareOn: (interval, acc, at) => t('officer.share_on', { interval })
    + (acc ? t('officer.share_accuracy', { acc }) : '') + (at ? t('officer.share_last', { at }) : ''),
  get shareOffline() { return t('officer.share_offline'); },
  get shareDenied() { return t('officer.share_denied'); },
  get shareUnavailable() { return t('officer.share_unavailable'); },
  acknowledgedAt: (alias, at) => t('officer.acknowledged_at', { alias, at }),
};
