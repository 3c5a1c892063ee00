// Browser storage that never throws: with storage disabled (some private modes), values
// last as long as the page instead.

function area(kind) {
  try {
    const storage = kind === "local" ? window.localStorage : window.sessionStorage;
    const probe = "webchat.probe";
    storage.setItem(probe, "1");
    storage.removeItem(probe);
    return storage;
  } catch {
    return null;
  }
}

const memory = new Map();
const areas = { local: area("local"), session: area("session") };

export function load(kind, key, fallback) {
  try {
    const raw = areas[kind] ? areas[kind].getItem(key) : memory.get(`${kind}:${key}`);
    if (raw === null || raw === undefined) return fallback;
    try {
      return JSON.parse(raw);
    } catch {
      return raw; // a plain string, as version 1 of the client stored the name
    }
  } catch {
    return fallback;
  }
}

export function save(kind, key, value) {
  const raw = JSON.stringify(value);
  try {
    if (areas[kind]) areas[kind].setItem(key, raw);
    else memory.set(`${kind}:${key}`, raw);
  } catch {
    memory.set(`${kind}:${key}`, raw); // full: keep it for this page at least
  }
}

export function remove(kind, key) {
  try {
    if (areas[kind]) areas[kind].removeItem(key);
  } catch {
    // nothing to do
  }
  memory.delete(`${kind}:${key}`);
}
