// Pure rules shared with the server (PROTOCOL.md 1.1), and text helpers. No DOM, no I/O:
// tests/e2e/test_client_rules.py checks them in Chromium against the server's own rules.

export const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
export const ID_RE = /^[0-9]{1,20}-[0-9]{1,20}$/;
export const MAX_NAME = 32;

// Unicode White_Space, as the server trims it (protocol.WHITE_SPACE). String.prototype.trim
// differs: it strips U+FEFF (a format character) and keeps U+0085.
const WS = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const TRIM_RE = new RegExp(`^[${WS}]+|[${WS}]+$`, "g");
const CONTROL_RE = /\p{Cc}/u;
const FORMAT_RE = /\p{Cf}/u;
const ONLY_FORMAT_RE = /^\p{Cf}+$/u;

export function trimWhiteSpace(text) {
  return text.replace(TRIM_RE, "");
}

/** Unicode code points, as the server counts `max_text` (not UTF-16 units). */
export function codePoints(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** [name, ""] if the server would accept `raw` as a name, else [null, why]. */
export function validName(raw) {
  const name = trimWhiteSpace(raw);
  if (!name) return [null, "Please enter a name."];
  if (codePoints(name) > MAX_NAME) return [null, `At most ${MAX_NAME} characters, please.`];
  if (CONTROL_RE.test(name)) return [null, "No control characters, please."];
  if (FORMAT_RE.test(name)) return [null, "No invisible characters (such as zero-width spaces), please."];
  return [name, ""];
}

/** "" if the server would accept `room` as a room name, else why not. */
export function roomProblem(room) {
  if (!room) return "Please enter a room name.";
  if (room.length > 64) return "Room names are at most 64 characters.";
  if (!ROOM_RE.test(room)) return "Room names use only letters A–Z, digits, “-” and “_”.";
  return "";
}

/** Why the server would refuse `text` as a message (bad_message), or "". */
export function textProblem(text, maxText) {
  const trimmed = trimWhiteSpace(text);
  if (!trimmed) return "empty";
  if (ONLY_FORMAT_RE.test(trimmed)) return "Only invisible characters: nothing to send.";
  const count = codePoints(trimmed);
  if (count > maxText) return `${count - maxText} characters over the limit of ${maxText}.`;
  return "";
}

/**
 * Split text into plain runs and http(s) links: [{text}] and [{text, href}]. Trailing
 * punctuation stays outside a link, and a closing bracket too unless the link opened one.
 */
export function linkify(text) {
  const parts = [];
  const re = /\bhttps?:\/\/[^\s<>"'`]+/giu;
  let last = 0;
  for (const match of text.matchAll(re)) {
    let url = match[0];
    while (/[.,;:!?'"»)\]}]$/u.test(url)) {
      const tail = url.at(-1);
      const opener = { ")": "(", "]": "[", "}": "{" }[tail];
      if (opener && url.split(opener).length > url.split(tail).length - 1) break;
      url = url.slice(0, -1);
    }
    let href = "";
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
    } catch {
      href = "";
    }
    if (!href) continue;
    if (match.index > last) parts.push({ text: text.slice(last, match.index) });
    parts.push({ text: url, href });
    last = match.index + url.length;
  }
  if (last < text.length) parts.push({ text: text.slice(last) });
  return parts;
}

/**
 * The ceiling of the next reconnect delay (full jitter: the delay is uniform below it), from
 * how long the page has been disconnected: half of that, at least 1 s, at most 30 s.
 *
 * So the first retry after a drain (1012) or a 1013 comes within a second, and a page is
 * back within about half the outage after the service returns (a restart of a few seconds
 * costs a second or two, not the 10-20 s that doubling per attempt can add). Retries still
 * thin out geometrically: each waits on average a quarter of the time offline so far, and
 * clients that lost the service together spread over half that time, so no herd forms.
 */
export function backoffCeilingMs(offlineMs) {
  return Math.min(30_000, Math.max(1000, offlineMs / 2));
}

/**
 * A `Retry-After` header (delay-seconds or an HTTP date) in milliseconds from `now`; 0 when
 * absent or unreadable, at most 5 minutes. An overloaded or full service sends it with 503.
 */
export function retryAfterMs(value, now = Date.now()) {
  if (typeof value !== "string" || !value.trim()) return 0;
  const text = value.trim();
  const ms = /^\d+$/.test(text) ? Number(text) * 1000 : Date.parse(text) - now;
  return Number.isFinite(ms) ? Math.min(300_000, Math.max(0, ms)) : 0;
}

/**
 * The delay before the next reconnect: full jitter below the backoff ceiling, but never
 * sooner than the service asked (Retry-After), plus up to as much again at random so that
 * clients refused together do not all come back together. `random` returns [0, 1).
 */
export function reconnectDelayMs(offlineMs, retryAfter = 0, random = Math.random) {
  const jittered = random() * backoffCeilingMs(offlineMs);
  return retryAfter > 0 ? Math.max(jittered, retryAfter * (1 + random())) : jittered;
}

/** A secret key for anonymous mode: 32 random bytes, base64url (43 characters). */
export function makeKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function makeNonce() {
  // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `c-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Whether two timestamps (ms) fall on the same local day. */
export function sameDay(a, b) {
  const x = new Date(a);
  const y = new Date(b);
  return x.getFullYear() === y.getFullYear() && x.getMonth() === y.getMonth() && x.getDate() === y.getDate();
}

/** "Today", "Yesterday" or a date, for day separators. */
export function dayLabel(ts, now = Date.now()) {
  if (sameDay(ts, now)) return "Today";
  if (sameDay(ts, now - 86_400_000)) return "Yesterday";
  const when = new Date(ts);
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (when.getFullYear() !== new Date(now).getFullYear()) options.year = "numeric";
  return when.toLocaleDateString([], options);
}
