// One room as this tab holds it: its WebSocket, its members, its outbox (outbox.js) and its
// conversation on screen (conversation.js).
//
// Delivery model (unchanged from version 1 of the client):
// - What the user writes waits in the outbox until its echo comes back, and is sent again
//   with the same nonces after a reconnect.
// - Messages are shown in the room's order and never twice (the conversation drops ids it
//   has seen).
// - The first connection asks for `history=50`; reconnects pass the last id seen as
//   `since`.
// - Reconnects use full jitter under a ceiling that grows with the time offline, from 1 s
//   to 30 s (text.backoffCeilingMs), and wait at least what a refusal's Retry-After asks
//   (an overloaded or full service answers 503 with it).
// - Authenticated mode (the shell gives a token source, token.js): every connection carries
//   the tab's token instead of a name and key; a new token is sent on the open socket as a
//   `refresh` frame; a 401 or a close with 4001 (token expired) means: fetch a fresh token
//   and reconnect at once, with `since`.

import { Conversation, HISTORY } from "./conversation.js";
import { Outbox } from "./outbox.js";
import { load, remove } from "./store.js";
import { makeNonce, reconnectDelayMs, retryAfterMs } from "./text.js";

const CONNECT_TIMEOUT_MS = 10_000; // no welcome this long: try again
const TOKEN_EXPIRED = 4001; // PROTOCOL.md 1.1: the connection's token expired
// Refusals that no retry changes: the user must act (another name, another room). Without a
// token source `unauthorized` is one too: the page cannot sign in.
const FATAL = new Set(["name_taken", "bad_request", "forbidden_origin", "forbidden_room"]);

/** A member's id: its name, and in authenticated mode its user (protocol.member_key). */
function memberId(name, user) {
  return typeof user === "string" && user ? `${name}\u001f${user}` : name;
}

export class RoomSession {
  constructor(room, hooks) {
    this.room = room;
    this.hooks = hooks; // identity, changed, fatal, notify, announce, reading, tokens, api
    this.tokens = hooks.tokens ?? null; // the tab's TokenSource in authenticated mode
    this.token = ""; // the token the current (or last) connection attempt used
    this.attemptId = 0;
    this.state = "connecting"; // connecting | open | waiting | stopped
    this.ws = null;
    this.open = false;
    this.attempt = 0;
    this.offlineSince = 0; // when the last good connection ended (or the first attempt began)
    this.retryAt = 0;
    this.retryAfter = 0; // ms the service asked to wait (Retry-After of a 503), for one retry
    this.closeCode = null;
    this.me = "";
    this.user = ""; // this connection's `sub` (authenticated mode), from the welcome
    this.limits = { max_text: 2000, rate_per_s: 10, burst: 20 };
    // Present members: id -> display name. In authenticated mode a member is a user under a
    // display name, as the server counts them (two users may share a name); in anonymous
    // mode it is the name itself.
    this.members = new Map();
    this.memberCount = 0;
    this.stale = false;
    this.draft = load("session", this.key("draft"), "");
    this.timers = { retry: 0, open: 0 };
    this.view = new Conversation(room, {
      changed: (what) => hooks.changed(this, what),
      reading: () => hooks.reading(this),
      mine: (frame) => this.own(frame),
      connected: () => this.open,
      fetch: (path) => hooks.api(path),
    });
    this.outbox = new Outbox(this.key("outbox"), this.view.outboxList, {
      send: (frame) => this.ws.send(JSON.stringify(frame)),
      name: () => this.me || this.hooks.identity().name,
      dead: (why) => this.abandon(why),
      dismissed: () => this.hooks.changed(this, "focus-composer"),
    });
    this.unlisten = this.tokens ? this.tokens.onToken((token) => this.sendRefresh(token)) : null;
  }

  key(what) {
    return `webchat.${what}.${this.room}`;
  }

  // The conversation on screen, for the shell.
  get element() {
    return this.view.element;
  }

  get unread() {
    return this.view.unread;
  }

  get newBelow() {
    return this.view.newBelow;
  }

  show() {
    this.view.show();
  }

  hide() {
    this.view.hide();
  }

  markRead() {
    this.view.markRead();
  }

  scrollToBottom() {
    this.view.scrollToBottom();
  }

  /** Whether a message is this person's: by `user` in authenticated mode, else by name. */
  own(frame) {
    if (this.user && typeof frame.user === "string") return frame.user === this.user;
    return frame.name === this.me;
  }

  /** This connection's member id (see `members`). */
  get myId() {
    return memberId(this.me, this.user);
  }

  // --- the outbox ------------------------------------------------------------------------

  send(text) {
    this.outbox.add(text, makeNonce());
    if (this.view.visible) this.view.scrollToBottom();
    this.pump();
  }

  pump() {
    this.outbox.pump(this.open);
  }

  // --- the connection ----------------------------------------------------------------------

  socketUrl(scheme) {
    const params = new URLSearchParams({ room: this.room });
    if (this.tokens) {
      params.set("token", this.token);
    } else {
      const { name, key } = this.hooks.identity();
      params.set("name", name);
      params.set("key", key);
    }
    if (this.view.lastId) params.set("since", this.view.lastId);
    else params.set("history", String(HISTORY));
    return `${scheme}//${location.host}/ws?${params}`;
  }

  start() {
    this.connect();
  }

  setState(state) {
    this.state = state;
    this.hooks.changed(this, "status");
  }

  connect() {
    clearTimeout(this.timers.retry);
    this.timers.retry = 0;
    this.retryAt = 0;
    if (this.state === "stopped") return;
    this.setState("connecting");
    const attempt = ++this.attemptId;
    if (!this.tokens) {
      this.openSocket();
      return;
    }
    // A token first (the current one while valid, shared by the tab's rooms).
    this.tokens.get().then(
      (token) => {
        if (attempt !== this.attemptId || this.state !== "connecting" || this.ws) return;
        this.token = token;
        this.openSocket();
      },
      (error) => {
        if (attempt !== this.attemptId || this.state === "stopped") return;
        this.hooks.notify(`Cannot sign in to the chat: ${error.message}.`, "error", "token");
        this.scheduleReconnect();
      },
    );
  }

  openSocket() {
    let ws;
    try {
      ws = new WebSocket(this.socketUrl(location.protocol === "https:" ? "wss:" : "ws:"));
    } catch (error) {
      this.hooks.notify(`Cannot connect: ${error.message}`, "error", "connection");
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.timers.open = setTimeout(() => {
      if (this.ws === ws && !this.open) this.abandon("the server did not answer");
    }, CONNECT_TIMEOUT_MS);
    ws.addEventListener("message", (event) => {
      if (this.ws === ws) this.onFrame(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws === ws) this.onClose(event);
    });
  }

  /** Retry at once (the browser is back online, the tab is visible again, or a click). */
  reconnectNow() {
    if (this.state === "waiting") this.connect();
  }

  /** Reconnect with the identity the hooks give now (a new name). */
  restart() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "renamed");
      this.disconnected();
    }
    this.state = "connecting";
    this.attempt = 0;
    this.offlineSince = 0;
    this.connect();
  }

  /** Leave the room for good: close the socket, forget the outbox and draft. */
  stop() {
    this.state = "stopped";
    this.unlisten?.();
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    if (this.ws) this.ws.close(1000, "left the room");
    this.ws = null;
    this.open = false;
    this.outbox.forget();
    remove("session", this.key("draft"));
    this.view.element.remove();
  }

  /** Stop using the current socket at once and reconnect, without waiting for its close. */
  abandon(why) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.close(4000, why.slice(0, 100));
    this.disconnected();
    this.hooks.notify(`Connection lost (${why}); reconnecting…`, "warning", "connection");
    this.scheduleReconnect();
  }

  disconnected() {
    clearTimeout(this.timers.open);
    const wasOpen = this.open;
    this.open = false;
    this.outbox.disconnected();
    if (wasOpen) {
      this.stale = true; // the member list is what we knew last
      this.hooks.changed(this, "members");
      this.hooks.announce(`Connection to #${this.room} lost.`);
    }
    this.pump();
  }

  onClose(event) {
    const wasOpen = this.open;
    this.ws = null;
    if (wasOpen) this.closeCode = event.code; // why the last established connection ended
    this.disconnected();
    if (!wasOpen) {
      this.diagnose();
      return;
    }
    const code = event.code;
    if (code === TOKEN_EXPIRED && this.tokens) {
      // The token expired before a new one could be sent: a fresh one, and back at once.
      this.tokens.invalidate();
      this.hooks.notify("Your sign-in expired; reconnecting…", "warning", "connection");
      this.connect();
      return;
    }
    if (code === 1008) this.hooks.notify("Disconnected for sending too fast.", "error", "connection");
    else if (code === 1009) this.hooks.notify("That message was too large to send.", "error", "connection");
    else if (code === 1012) this.hooks.notify("The server is restarting; reconnecting…", "warning", "connection");
    else this.hooks.notify("Connection lost; reconnecting…", "warning", "connection");
    this.scheduleReconnect();
  }

  /**
   * An attempt failed before the welcome. Browsers do not say why a WebSocket was refused,
   * so ask the same URL over plain HTTP: the server answers what the upgrade got (409
   * name_taken, 400, 403, 503 with the Retry-After the next attempt honours) or 426 if it
   * would have been accepted.
   */
  async diagnose() {
    let error = null;
    if (navigator.onLine !== false) {
      try {
        const response = await fetch(this.socketUrl(location.protocol), {
          cache: "no-store",
          signal: AbortSignal.timeout(5000),
        });
        if (response.status >= 400 && response.status < 500 && response.status !== 426) {
          error = (await response.json())?.error ?? null;
        }
        if (response.status === 503) this.retryAfter = retryAfterMs(response.headers.get("Retry-After"));
      } catch {
        error = null; // unreachable: an outage, retried below
      }
    }
    if (this.state === "stopped" || this.ws) return;
    if (error?.code === "unauthorized" && this.tokens) {
      this.tokens.invalidate(); // the next attempt fetches a fresh token
      this.scheduleReconnect();
      return;
    }
    if (error && (FATAL.has(error.code) || error.code === "unauthorized")) {
      this.state = "stopped";
      this.hooks.fatal(this, String(error.code), String(error.message ?? error.code));
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.state === "stopped") return;
    this.offlineSince ||= Date.now();
    const delay = reconnectDelayMs(Date.now() - this.offlineSince, this.retryAfter);
    this.retryAfter = 0;
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => this.connect(), delay);
    this.setState("waiting");
  }

  onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        break;
      case "message":
        this.view.add(frame);
        if (typeof frame.nonce === "string" && this.own(frame) && this.outbox.acknowledge(frame.nonce)) {
          this.pump();
        }
        break;
      case "presence":
        this.onPresence(frame);
        break;
      case "refreshed":
        break; // the server took the new token: the connection lives on
      case "gap":
        this.view.gap();
        this.hooks.notify("Some messages may be missing: the history no longer reaches back that far.", "warning", "gap");
        break;
      case "error":
        this.onError(frame);
        break;
      default:
        break; // frame types from a newer server are ignored
    }
  }

  /** A new token for the tab: hand it to the open connection before the old one expires. */
  sendRefresh(token) {
    this.token = token;
    if (this.open && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "refresh", token }));
    }
  }

  onWelcome(frame) {
    clearTimeout(this.timers.open);
    const reconnected = this.stale;
    this.open = true;
    this.attempt = 0;
    this.offlineSince = 0;
    this.me = typeof frame.name === "string" ? frame.name : this.hooks.identity().name;
    this.user = typeof frame.user === "string" ? frame.user : "";
    if (frame.limits && typeof frame.limits === "object") this.limits = { ...this.limits, ...frame.limits };
    const names = Array.isArray(frame.members) ? frame.members : [];
    const users = Array.isArray(frame.users) && frame.users.length === names.length ? frame.users : null;
    this.members = new Map(names.map((name, i) => [memberId(String(name), users?.[i]), String(name)]));
    this.members.set(this.myId, this.me);
    this.memberCount = Math.max(this.members.size, Number(frame.member_count) || 0);
    this.stale = false;
    this.view.replayStarts();
    this.setState("open");
    this.hooks.changed(this, "members");
    if (reconnected) this.hooks.announce(`Connected to #${this.room} again.`);
    this.hooks.notify("", "info", "connection");
    this.pump(); // resend what the outbox holds, with the same nonces
  }

  onPresence(frame) {
    if (typeof frame.name !== "string") return;
    const id = memberId(frame.name, frame.user);
    if (frame.event === "join" && !this.members.has(id)) {
      this.members.set(id, frame.name);
      this.memberCount += 1;
      if (this.view.visible) this.hooks.announce(`${frame.name} joined #${this.room}.`);
    } else if (frame.event === "leave" && this.members.delete(id)) {
      this.memberCount = Math.max(this.members.size, this.memberCount - 1);
      if (this.view.visible) this.hooks.announce(`${frame.name} left #${this.room}.`);
    }
    this.hooks.changed(this, "members");
  }

  onError(frame) {
    const code = String(frame.code ?? "error");
    const message = typeof frame.message === "string" ? frame.message : code;
    switch (code) {
      case "rate_limited":
        this.hooks.notify("Slow down: messages are being sent too fast. Yours will follow.", "warning", "rate");
        this.outbox.retryInFlight(Math.ceil(1000 / (Number(this.limits.rate_per_s) || 1)) + 100, () => this.pump());
        break;
      case "unavailable":
        this.hooks.notify("The chat service is having trouble; your message will be retried.", "warning", "unavailable");
        this.outbox.retryInFlight(2000 + Math.random() * 3000, () => this.pump());
        break;
      case "unauthorized":
        // A refresh was refused: this connection keeps its token until it expires (4001).
        this.hooks.notify("Your sign-in could not be renewed; the chat will reconnect.", "warning", "token");
        break;
      case "bad_message":
        this.hooks.notify(`Message refused: ${message}`, "error", "refused");
        this.outbox.failInFlight(message);
        this.pump();
        break;
      default:
        this.hooks.notify(`Error (${code}): ${message}`, "error", code);
        break;
    }
  }
}
