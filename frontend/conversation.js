// One room's conversation on screen: the message list, scroll-back through older pages,
// day separators and grouping, unread counting, and the scroll position kept while hidden.
//
// Messages are shown in the room's order and never twice: ids already seen are dropped.
// Older pages come from the history API with `before=`, when the reader nears the top.

import { load, save } from "./store.js";
import { ID_RE } from "./text.js";
import { el, messageElement, relayout } from "./view.js";

export const HISTORY = 50; // messages shown on first load, and per page of scroll-back
// The replay after a welcome comes in one burst: it is over when frames pause this long, or
// this long after the welcome at the latest (live messages must not extend it).
const REPLAY_QUIET_MS = 250;
const REPLAY_MAX_MS = 1500;
const MAX_RENDERED = 1000; // messages kept while at the bottom; older ones can be re-fetched
const NEAR_EDGE_PX = 200;

export class Conversation {
  /**
   * `hooks`: changed(what), reading() (the user looks at it), mine(frame) (an own message),
   * connected(), fetch(path) (a GET of the API, with the token in authenticated mode).
   */
  constructor(room, hooks) {
    this.room = room;
    this.hooks = hooks;
    this.seen = new Set();
    this.lastId = null; // newest id shown: `since` of the next connection
    this.oldestId = null; // oldest id shown: `before` of the next page
    this.exhausted = false;
    this.loadingOlder = false;
    this.olderFailed = false;
    this.replaying = false;
    this.firstConnection = true;
    this.replayEnds = 0;
    this.replayTimer = 0;
    this.unread = 0;
    this.newBelow = 0; // arrived while scrolled up
    this.firstUnread = null;
    this.readKey = `webchat.read.${room}`;
    this.readMarker = load("local", this.readKey, null);
    this.savedScroll = null;
    this.visible = false;
    this.layoutQueued = false;
    this.build();
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
      this.hooks.changed("below");
    }
  }

  onScroll() {
    if (this.newBelow && this.nearBottom()) {
      this.newBelow = 0;
      this.hooks.changed("below");
    }
    if (this.element.scrollTop < NEAR_EDGE_PX) this.loadOlder();
  }

  /** The user is looking at this room now: everything in it is read. */
  markRead() {
    if (this.unread) {
      this.unread = 0;
      this.hooks.changed("unread");
    }
    if (this.lastId && this.readMarker !== this.lastId) {
      this.readMarker = this.lastId;
      save("local", this.readKey, this.lastId);
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
      text = this.hooks.connected() ? "" : "Loading messages…";
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
    return this.hooks.mine(frame);
  }

  /** A message frame from the server, live or replayed: shown once, in arrival order. */
  add(frame) {
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
      this.hooks.changed("below");
    }
  }

  /** Unread: others' messages after the last one read here (the marker survives reloads). */
  count(frame) {
    if (frame.id === this.readMarker || this.own(frame)) {
      this.unread = 0;
      this.firstUnread = null;
    } else if (!this.hooks.reading()) {
      this.unread += 1;
      this.firstUnread ??= frame.id;
    }
    if (this.hooks.reading()) this.markRead();
    this.hooks.changed("unread");
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
    let truncated = false; // cut short by the service's size bound: older ones remain
    try {
      const response = await this.hooks.fetch(url);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      page = Array.isArray(body.messages) ? body.messages : [];
      truncated = body.truncated === true;
    } catch {
      this.olderFailed = true;
    }
    this.loadingOlder = false;
    if (page !== null && before === this.oldestId) this.prepend(page, truncated);
    this.renderHistoryStart();
    this.layout();
  }

  prepend(page, truncated = false) {
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
    if (page.length < HISTORY && !truncated) this.exhausted = true;
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
    clearTimeout(this.replayTimer);
    const wait = Math.max(0, Math.min(REPLAY_QUIET_MS, this.replayEnds - Date.now()));
    this.replayTimer = setTimeout(() => {
      this.replaying = false;
      this.region.removeAttribute("aria-busy");
      if (this.firstConnection && !this.log.children.length) this.exhausted = true;
      this.firstConnection = false;
      this.layout();
    }, wait);
  }

  /** The server says messages may be missing (history no longer reaches back). */
  gap() {
    const item = el("li", "system", "Some earlier messages may be missing.");
    item.dataset.testid = "gap";
    this.log.append(item);
  }
}
