// Authenticated mode (PROTOCOL.md 1.1 "Identity"): the tab's token, from the page's token
// source.
//
// The page names its token source with `data-token-url` on <html> (the service writes it
// there from --auth-token-url; a page embedding the client sets it itself): a URL on this
// origin that answers {"token": "..."} for the signed-in user, fetched with the user's
// cookies. One token serves every room of the tab. It is fetched before the first connection
// and again before it expires (each open socket then sends it in a `refresh` frame), and at
// once after the server refused or closed a connection for it (401, 4001).

const MAX_MARGIN_MS = 60_000; // refresh at most this long before expiry...
const MARGIN_SHARE = 0.25; // ...and at most this share of the token's lifetime before it
const RETRY_MS = 3000; // a failed refresh is tried again this much later (until expiry)

export class TokenError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status; // the token source's HTTP status, 0 if it could not be reached
  }
}

/** The claims of a JWT, read without verifying (the server verifies): for exp and name. */
export function readClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

export class TokenSource {
  constructor(url) {
    this.url = url;
    this.token = "";
    this.claims = {};
    // When the token expires by this browser's clock: its lifetime (exp - iat) from when it
    // arrived, so a browser clock that is off does not make every token look expired.
    this.expiresAt = 0;
    this.pending = null; // the fetch in flight: every caller shares it
    this.timer = 0;
    this.lifetime = 0;
    this.listeners = new Set(); // called with each new token
  }

  /** The display name and user of the current token, for the page before any welcome. */
  get name() {
    const { name, sub } = this.claims;
    return typeof name === "string" ? name : typeof sub === "string" ? sub.slice(0, 32) : "";
  }

  get user() {
    return typeof this.claims.sub === "string" ? this.claims.sub : "";
  }

  /** A token to connect with: the current one while it is valid, else a fresh one. */
  async get() {
    if (this.token && this.expiresAt > Date.now() + 1000) return this.token;
    return this.fetch();
  }

  /** The server refused the current token (401) or closed for it (4001): forget it. */
  invalidate() {
    this.token = "";
    this.claims = {};
    this.expiresAt = 0;
  }

  onToken(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  fetch() {
    this.pending ??= this.request().finally(() => {
      this.pending = null;
    });
    return this.pending;
  }

  async request() {
    let response;
    try {
      response = await fetch(this.url, {
        credentials: "include",
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: AbortSignal.timeout(10_000),
      });
    } catch (error) {
      throw new TokenError(`the token source cannot be reached (${error.message})`);
    }
    if (!response.ok) {
      throw new TokenError(`the token source answered HTTP ${response.status}`, response.status);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (typeof body?.token !== "string" || !body.token) {
      throw new TokenError("the token source did not answer {\"token\": \"...\"}", response.status);
    }
    this.token = body.token;
    this.claims = readClaims(body.token);
    const exp = Number(this.claims.exp) * 1000 || 0;
    const iat = Number(this.claims.iat) * 1000 || 0;
    this.lifetime = exp && iat && exp > iat ? exp - iat : Math.max(0, exp - Date.now());
    this.expiresAt = exp ? Date.now() + this.lifetime : 0;
    this.schedule();
    for (const listener of this.listeners) listener(this.token);
    return this.token;
  }

  /** Fetch the next token before this one expires; retry a failed fetch until it does. */
  schedule(delay = null) {
    clearTimeout(this.timer);
    const expires = this.expiresAt;
    if (!expires) return;
    if (delay === null) {
      const margin = Math.min(MAX_MARGIN_MS, this.lifetime * MARGIN_SHARE);
      delay = Math.max(1000, expires - margin - Date.now());
    }
    this.timer = setTimeout(() => {
      this.fetch().catch(() => {
        if (Date.now() + RETRY_MS < this.expiresAt) this.schedule(RETRY_MS);
      });
    }, delay);
  }
}

/**
 * GET a JSON API path, with the token when there is one; a 401 (the token expired since)
 * is tried once more with a fresh token. Returns the Response.
 */
export async function apiFetch(tokens, path) {
  if (!tokens) return fetch(path, { cache: "no-store" });
  const get = async (token) =>
    fetch(path, { cache: "no-store", headers: { Authorization: `Bearer ${token}` } });
  let response = await get(await tokens.get());
  if (response.status === 401) {
    tokens.invalidate();
    response = await get(await tokens.get());
  }
  return response;
}
