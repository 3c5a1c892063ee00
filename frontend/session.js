// One room as this tab holds it: its WebSocket, its conversation and its outbox.
//
// Delivery model (unchanged from version 1 of the client):
// - Every message the user writes goes into the outbox with a nonce and stays there, shown
//   as pending below the conversation, until the server's echo (a `message` frame carrying
//   that nonce) comes back. The outbox is sent one frame at a time, so an error frame always
//   belongs to the message in flight; after a reconnect it is resent with the same nonces,
//   which the server deduplicates. It is kept in sessionStorage, so a reload loses nothing.
// - Messages are shown in the room's order and never twice: ids already seen are dropped.
// - The first connection asks for `history=50`; reconnects pass the last id seen as
//   `since`. Older pages come from the history API with `before=`.
// - Reconnects use full jitter under a ceiling that grows with the time offline, from 1 s
//   to 30 s (text.backoffCeilingMs).

import { load, remove, save } from "./store.js";
import { ID_RE, backoffCeilingMs, makeNonce } from "./text.js";
import { el, messageElement, pendingElement, relayout } from "./view.js";

const HISTORY = 50; // messages shown on first load, and per page of scroll-back
const ACK_TIMEOUT_MS = 10_000; // no echo this long: the socket is presumed dead
const CONNECT_TIMEOUT_MS = 10_000; // no welcome this long: try again
// The replay after a welcome comes in one burst: it is over when frames pause this long, or
// this long after the welcome at the latest (live messages must not extend it).
const REPLAY_QUIET_MS = 250;
const REPLAY_MAX_MS = 1500;
const MAX_RENDERED = 1000; // messages kept while at the bottom; older ones can be re-fetched
const NEAR_EDGE_PX = 200;
// Refusals that no retry changes: the user must act (another name, another room).
const FATAL = new Set(["name_taken", "bad_request", "forbidden_origin"]);

export class RoomSession {
  constructor(room, hooks) {
    this.room = room;
    this.hooks = hooks; // identity, changed, fatal, notify, announce, reading
    this.state = "connecting"; // connecting | open | waiting | stopped
    this.ws = null;
    this.open = false;
    this.attempt = 0;
    this.offlineSince = 0; // when the last good connection ended (or the first attempt began)
    this.retryAt = 0;
    this.closeCode = null;
    this.me = "";
    this.limits = { max_text: 2000, rate_per_s: 10, burst: 20 };
    this.members = new Set();
    this.memberCount = 0;
    this.stale = false;
    this.seen = new Set();
    this.lastId = null; // newest id shown: `since` of the next connection
    this.oldestId = null; // oldest id shown: `before` of the next page
    this.exhausted = false;
    this.loadingOlder = false;
    this.olderFailed = false;
    this.replaying = false;
    this.firstConnection = true;
    this.replayEnds = 0;
    this.unread = 0;
    this.newBelow = 0; // arrived while scrolled up
    this.firstUnread = null;
    this.readMarker = load("local", this.key("read"), null);
    this.draft = load("session", this.key("draft"), "");
    this.savedScroll = null;
    this.visible = false;
    this.outbox = [];
    this.inFlight = null;
    this.timers = { retry: 0, ack: 0, resend: 0, open: 0, replay: 0 };
    this.layoutQueued = false;
    this.build();
    for (const { nonce, text } of load("session", this.key("outbox"), [])) {
      if (typeof nonce === "string" && typeof text === "string") this.queue(text, nonce);
    }
  }

  key(what) {
    return `webchat.${what}.${this.room}`;
  }

  build() {
    this.element = el("div", "conversation");
    Object.assign(this.element.dataset, { testid: "conversation", room: this.room });
    this.element.setAttribute("role", "region");
    this.element.setAttribute("aria-label", `Conversation in #${this.room}`);
    this.element.tabIndex = 0;
    this.element.hidden = true;
    this.historyStart = el("div", "history-start");
    this.historyStart.dataset.testid = "history-start";
    // The live region wraps the list, so the list keeps its semantics ("list, 50 items").
    this.region = el("div", "log");
    this.region.setAttribute("role", "log");
    this.region.setAttribute("aria-label", `Messages in #${this.room}`);
    this.log = el("ol", "messages");
    this.log.dataset.testid = "messages";
    this.region.append(this.log);
    this.outboxList = el("ol", "outbox");
    this.outboxList.dataset.testid = "outbox";
    this.outboxList.setAttribute("aria-label", "Unsent messages");
    this.element.append(this.historyStart, this.region, this.outboxList);
    this.element.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.renderHistoryStart();
  }

  // --- showing -------------------------------------------------------------------------

  show() {
    this.visible = true;
    this.element.hidden = false;
    const saved = this.savedScroll;
    if (!saved || saved.atBottom) this.scrollToBottom();
    else this.element.scrollTop = saved.top;
    this.layout();
  }

  hide() {
    this.savedScroll = { top: this.element.scrollTop, atBottom: this.nearBottom() };
    this.visible = false;
    this.element.hidden = true;
    this.firstUnread = null; // the "New messages" mark is for one visit
    this.layout();
  }

  nearBottom() {
    const s = this.element;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  scrollToBottom() {
    this.element.scrollTop = this.element.scrollHeight;
    if (this.newBelow) {
      this.newBelow = 0;
      this.hooks.changed(this, "below");
    }
  }

  onScroll() {
    if (this.newBelow && this.nearBottom()) {
      this.newBelow = 0;
      this.hooks.changed(this, "below");
    }
    if (this.element.scrollTop < NEAR_EDGE_PX) this.loadOlder();
  }

  /** The user is looking at this room now: everything in it is read. */
  markRead() {
    if (this.unread) {
      this.unread = 0;
      this.hooks.changed(this, "unread");
    }
    if (this.lastId && this.readMarker !== this.lastId) {
      this.readMarker = this.lastId;
      save("local", this.key("read"), this.lastId);
    }
  }

  /** Day separators and grouping, once per burst of changes; then maybe load older ones. */
  layout() {
    if (this.layoutQueued) return;
    this.layoutQueued = true;
    queueMicrotask(() => {
      this.layoutQueued = false;
      relayout(this.log, this.firstUnread);
      this.renderHistoryStart();
      if (this.visible && !this.replaying && this.element.scrollTop < NEAR_EDGE_PX) {
        this.loadOlder();
      }
    });
  }

  renderHistoryStart() {
    const box = this.historyStart;
    let text;
    let button = null;
    if (this.exhausted) {
      text = `This is the beginning of #${this.room}.`;
    } else if (this.loadingOlder) {
      text = "Loading earlier messages…";
    } else if (this.olderFailed) {
      text = "Earlier messages could not be loaded.";
      button = "Try again";
    } else if (this.oldestId) {
      text = "Earlier messages";
      button = "Load earlier messages";
    } else {
      text = this.open ? "" : "Loading messages…";
    }
    if (box.dataset.text === `${text}|${button}`) return;
    box.dataset.text = `${text}|${button}`;
    box.dataset.state = this.exhausted ? "beginning" : this.loadingOlder ? "loading" : "more";
    const children = [el("p", "", text)];
    if (button) {
      const b = el("button", "link-button", button);
      b.type = "button";
      b.addEventListener("click", () => {
        this.olderFailed = false;
        this.loadOlder();
      });
      children.push(b);
    }
    box.replaceChildren(...children);
  }

  // --- messages ------------------------------------------------------------------------

  own(frame) {
    return frame.name === this.me;
  }

  onMessage(frame) {
    if (typeof frame.id !== "string" || this.seen.has(frame.id)) return;
    this.seen.add(frame.id);
    if (ID_RE.test(frame.id)) this.lastId = frame.id;
    if (this.oldestId === null) this.oldestId = frame.id;
    const stick = !this.visible || this.nearBottom();
    this.log.append(messageElement(frame, this.own(frame)));
    if (stick) this.trimTop();
    if (this.replaying) this.replayGoesOn();
    this.count(frame);
    this.layout();
    if (!this.visible) return;
    if (stick) {
      this.scrollToBottom();
    } else if (!this.own(frame)) {
      this.newBelow += 1;
      this.hooks.changed(this, "below");
    }
  }

  /** Unread: others' messages after the last one read here (the marker survives reloads). */
  count(frame) {
    if (frame.id === this.readMarker || this.own(frame)) {
      this.unread = 0;
      this.firstUnread = null;
    } else if (!this.hooks.reading(this)) {
      this.unread += 1;
      this.firstUnread ??= frame.id;
    }
    if (this.hooks.reading(this)) this.markRead();
    this.hooks.changed(this, "unread");
  }

  trimTop() {
    const items = this.log.children;
    const extra = items.length - MAX_RENDERED;
    if (extra <= 0) return;
    for (let i = 0; i < extra; i++) {
      this.seen.delete(items[0].dataset.id);
      items[0].remove();
    }
    this.oldestId = items[0]?.dataset.id ?? null;
    this.exhausted = false;
  }

  async loadOlder() {
    if (this.loadingOlder || this.exhausted || this.olderFailed || this.replaying) return;
    if (!this.oldestId || !this.visible) return;
    this.loadingOlder = true;
    this.renderHistoryStart();
    const before = this.oldestId;
    const url = `/api/rooms/${encodeURIComponent(this.room)}/messages?before=${before}&limit=${HISTORY}`;
    let page = null;
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      page = Array.isArray(body.messages) ? body.messages : [];
    } catch {
      this.olderFailed = true;
    }
    this.loadingOlder = false;
    if (page !== null && before === this.oldestId) this.prepend(page);
    this.renderHistoryStart();
    this.layout();
  }

  prepend(page) {
    const scroller = this.element;
    const height = scroller.scrollHeight;
    const top = scroller.scrollTop;
    const items = [];
    for (const frame of page) {
      if (typeof frame?.id !== "string" || this.seen.has(frame.id)) continue;
      this.seen.add(frame.id);
      items.push(messageElement(frame, this.own(frame)));
    }
    this.region.setAttribute("aria-busy", "true"); // not read out as if it were news
    this.log.prepend(...items);
    if (items.length) this.oldestId = items[0].dataset.id;
    if (page.length < HISTORY) this.exhausted = true;
    relayout(this.log, this.firstUnread);
    scroller.scrollTop = top + (scroller.scrollHeight - height);
    requestAnimationFrame(() => this.region.removeAttribute("aria-busy"));
  }

  /** The messages right after a welcome are a replay: quiet for screen readers, no paging. */
  replayStarts() {
    this.replaying = true;
    this.replayEnds = Date.now() + REPLAY_MAX_MS;
    this.region.setAttribute("aria-busy", "true");
    this.replayGoesOn();
  }

  replayGoesOn() {
    clearTimeout(this.timers.replay);
    const wait = Math.max(0, Math.min(REPLAY_QUIET_MS, this.replayEnds - Date.now()));
    this.timers.replay = setTimeout(() => {
      this.replaying = false;
      this.region.removeAttribute("aria-busy");
      if (this.firstConnection && !this.log.children.length) this.exhausted = true;
      this.firstConnection = false;
      this.layout();
    }, wait);
  }

  // --- the outbox ------------------------------------------------------------------------

  send(text) {
    this.queue(text, makeNonce());
    this.persistOutbox();
    this.pump();
  }

  queue(text, nonce) {
    const entry = { nonce, text, el: pendingElement(this.me || this.hooks.identity().name, text, nonce), failed: false };
    this.outbox.push(entry);
    this.outboxList.append(entry.el);
    if (this.visible) this.scrollToBottom();
  }

  persistOutbox() {
    const unsent = this.outbox.filter((e) => !e.failed).map(({ nonce, text }) => ({ nonce, text }));
    if (unsent.length) save("session", this.key("outbox"), unsent);
    else remove("session", this.key("outbox"));
  }

  setDelivery(entry, text) {
    const label = entry.el.querySelector(".delivery");
    if (label && label.textContent !== text) label.textContent = text;
  }

  /** Send the oldest unsent outbox entry, if the socket is open and nothing is in flight. */
  pump() {
    for (const entry of this.outbox) {
      if (!entry.failed) this.setDelivery(entry, this.open ? "sending…" : "pending");
    }
    if (!this.open || this.inFlight || this.timers.resend) return;
    const entry = this.outbox.find((e) => !e.failed);
    if (!entry) return;
    this.inFlight = entry;
    this.ws.send(JSON.stringify({ type: "message", text: entry.text, nonce: entry.nonce }));
    this.timers.ack = setTimeout(() => this.abandon("no answer from the server"), ACK_TIMEOUT_MS);
  }

  settleInFlight() {
    clearTimeout(this.timers.ack);
    this.timers.ack = 0;
    this.inFlight = null;
  }

  acknowledge(frame) {
    if (typeof frame.nonce !== "string" || !this.own(frame)) return;
    const index = this.outbox.findIndex((e) => e.nonce === frame.nonce);
    if (index < 0) return;
    const [entry] = this.outbox.splice(index, 1);
    entry.el.remove();
    if (this.inFlight === entry) this.settleInFlight();
    this.persistOutbox();
    this.pump();
  }

  /** The in-flight message was refused for good (bad_message): mark it, move on. */
  failInFlight(reason) {
    const entry = this.inFlight;
    if (!entry) return;
    this.settleInFlight();
    entry.failed = true;
    entry.el.classList.add("failed");
    entry.el.dataset.state = "failed";
    this.setDelivery(entry, `not sent: ${reason}`);
    const dismiss = el("button", "link-button", "Dismiss");
    dismiss.type = "button";
    dismiss.addEventListener("click", () => {
      this.outbox.splice(this.outbox.indexOf(entry), 1);
      entry.el.remove();
      this.hooks.changed(this, "focus-composer");
    });
    entry.el.querySelector(".bubble").append(dismiss);
    this.persistOutbox();
    this.pump();
  }

  /** The in-flight message was not processed (rate_limited, unavailable): send it later. */
  retryInFlight(delayMs) {
    if (!this.inFlight) return;
    this.settleInFlight();
    clearTimeout(this.timers.resend);
    this.timers.resend = setTimeout(() => {
      this.timers.resend = 0;
      this.pump();
    }, delayMs);
  }

  // --- the connection ----------------------------------------------------------------------

  socketUrl(scheme) {
    const { name, key } = this.hooks.identity();
    const params = new URLSearchParams({ room: this.room, name, key });
    if (this.lastId) params.set("since", this.lastId);
    else params.set("history", String(HISTORY));
    return `${scheme}//${location.host}/ws?${params}`;
  }

  start() {
    this.firstConnection = true;
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
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    if (this.ws) this.ws.close(1000, "left the room");
    this.ws = null;
    this.open = false;
    remove("session", this.key("outbox"));
    remove("session", this.key("draft"));
    this.element.remove();
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
    this.settleInFlight();
    clearTimeout(this.timers.resend);
    this.timers.resend = 0;
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
    if (code === 1008) this.hooks.notify("Disconnected for sending too fast.", "error", "connection");
    else if (code === 1009) this.hooks.notify("That message was too large to send.", "error", "connection");
    else if (code === 1012) this.hooks.notify("The server is restarting; reconnecting…", "warning", "connection");
    else this.hooks.notify("Connection lost; reconnecting…", "warning", "connection");
    this.scheduleReconnect();
  }

  /**
   * An attempt failed before the welcome. Browsers do not say why a WebSocket was refused,
   * so ask the same URL over plain HTTP: the server answers what the upgrade got (409
   * name_taken, 400, 403, 503) or 426 if it would have been accepted.
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
      } catch {
        error = null; // unreachable: an outage, retried below
      }
    }
    if (this.state === "stopped" || this.ws) return;
    if (error && FATAL.has(error.code)) {
      this.state = "stopped";
      this.hooks.fatal(this, String(error.code), String(error.message ?? error.code));
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.state === "stopped") return;
    this.offlineSince ||= Date.now();
    const delay = Math.random() * backoffCeilingMs(Date.now() - this.offlineSince);
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
        this.onMessage(frame);
        this.acknowledge(frame);
        break;
      case "presence":
        this.onPresence(frame);
        break;
      case "gap":
        this.log.append(el("li", "system", "Some earlier messages may be missing."));
        this.log.lastElementChild.dataset.testid = "gap";
        this.hooks.notify("Some messages may be missing: the history no longer reaches back that far.", "warning", "gap");
        break;
      case "error":
        this.onError(frame);
        break;
      default:
        break; // frame types from a newer server are ignored
    }
  }

  onWelcome(frame) {
    clearTimeout(this.timers.open);
    const reconnected = this.stale;
    this.open = true;
    this.attempt = 0;
    this.offlineSince = 0;
    this.me = typeof frame.name === "string" ? frame.name : this.hooks.identity().name;
    if (frame.limits && typeof frame.limits === "object") this.limits = { ...this.limits, ...frame.limits };
    this.members = new Set(Array.isArray(frame.members) ? frame.members : []);
    this.members.add(this.me);
    this.memberCount = Math.max(this.members.size, Number(frame.member_count) || 0);
    this.stale = false;
    this.replayStarts();
    this.setState("open");
    this.hooks.changed(this, "members");
    if (reconnected) this.hooks.announce(`Connected to #${this.room} again.`);
    this.hooks.notify("", "info", "connection");
    this.pump(); // resend what the outbox holds, with the same nonces
  }

  onPresence(frame) {
    if (typeof frame.name !== "string") return;
    if (frame.event === "join" && !this.members.has(frame.name)) {
      this.members.add(frame.name);
      this.memberCount += 1;
      if (this.visible) this.hooks.announce(`${frame.name} joined #${this.room}.`);
    } else if (frame.event === "leave" && this.members.delete(frame.name)) {
      this.memberCount = Math.max(this.members.size, this.memberCount - 1);
      if (this.visible) this.hooks.announce(`${frame.name} left #${this.room}.`);
    }
    this.hooks.changed(this, "members");
  }

  onError(frame) {
    const code = String(frame.code ?? "error");
    const message = typeof frame.message === "string" ? frame.message : code;
    switch (code) {
      case "rate_limited":
        this.hooks.notify("Slow down: messages are being sent too fast. Yours will follow.", "warning", "rate");
        this.retryInFlight(Math.ceil(1000 / (Number(this.limits.rate_per_s) || 1)) + 100);
        break;
      case "unavailable":
        this.hooks.notify("The chat service is having trouble; your message will be retried.", "warning", "unavailable");
        this.retryInFlight(2000 + Math.random() * 3000);
        break;
      case "bad_message":
        this.hooks.notify(`Message refused: ${message}`, "error", "refused");
        this.failInFlight(message);
        break;
      default:
        this.hooks.notify(`Error (${code}): ${message}`, "error", code);
        break;
    }
  }
}
