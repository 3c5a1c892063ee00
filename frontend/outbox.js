// A room's outbox: messages the user wrote, until the server's echo acknowledges them.
//
// Each entry has a nonce and stays, shown as pending below the conversation, until a
// `message` frame with that nonce comes back. Entries are sent one frame at a time, so an
// error frame always belongs to the one in flight; after a reconnect they are sent again with
// the same nonces, which the server deduplicates. Kept in sessionStorage: a reload loses none.

import { load, remove, save } from "./store.js";
import { el, pendingElement } from "./view.js";

const ACK_TIMEOUT_MS = 10_000; // no echo this long: the socket is presumed dead

export class Outbox {
  /**
   * `list` is the element entries are shown in; `hooks`: send(frame) -> bool (false: not
   * connected), name() (the sender's name), dead(why) (the socket gave no answer),
   * dismissed() (a failed entry was dismissed).
   */
  constructor(storageKey, list, hooks) {
    this.storageKey = storageKey;
    this.list = list;
    this.hooks = hooks;
    this.entries = []; // {nonce, text, el, failed}, oldest first
    this.inFlight = null;
    this.ackTimer = 0;
    this.resendTimer = 0;
    for (const { nonce, text } of load("session", storageKey, [])) {
      if (typeof nonce === "string" && typeof text === "string") this.add(text, nonce);
    }
  }

  get size() {
    return this.entries.length;
  }

  add(text, nonce) {
    const entry = { nonce, text, el: pendingElement(this.hooks.name(), text, nonce), failed: false };
    this.entries.push(entry);
    this.list.append(entry.el);
    this.persist();
  }

  persist() {
    const unsent = this.entries.filter((e) => !e.failed).map(({ nonce, text }) => ({ nonce, text }));
    if (unsent.length) save("session", this.storageKey, unsent);
    else remove("session", this.storageKey);
  }

  forget() {
    this.settle();
    clearTimeout(this.resendTimer);
    remove("session", this.storageKey);
  }

  label(entry, text) {
    const label = entry.el.querySelector(".delivery");
    if (label && label.textContent !== text) label.textContent = text;
  }

  /** Send the oldest unsent entry, if connected and nothing is in flight. */
  pump(open) {
    for (const entry of this.entries) {
      if (!entry.failed) this.label(entry, open ? "sending…" : "pending");
    }
    if (!open || this.inFlight || this.resendTimer) return;
    const entry = this.entries.find((e) => !e.failed);
    if (!entry) return;
    this.inFlight = entry;
    this.hooks.send({ type: "message", text: entry.text, nonce: entry.nonce });
    this.ackTimer = setTimeout(() => this.hooks.dead("no answer from the server"), ACK_TIMEOUT_MS);
  }

  /** The connection is gone: nothing is in flight any more, nothing waits to be resent. */
  disconnected() {
    this.settle();
    clearTimeout(this.resendTimer);
    this.resendTimer = 0;
  }

  settle() {
    clearTimeout(this.ackTimer);
    this.ackTimer = 0;
    this.inFlight = null;
  }

  /** An echo with this nonce came back: the entry is done. True if it was one of ours. */
  acknowledge(nonce) {
    const index = this.entries.findIndex((e) => e.nonce === nonce);
    if (index < 0) return false;
    const [entry] = this.entries.splice(index, 1);
    entry.el.remove();
    if (this.inFlight === entry) this.settle();
    this.persist();
    return true;
  }

  /** The in-flight message was refused for good (bad_message): mark it, move on. */
  failInFlight(reason) {
    const entry = this.inFlight;
    if (!entry) return;
    this.settle();
    entry.failed = true;
    entry.el.classList.add("failed");
    entry.el.dataset.state = "failed";
    this.label(entry, `not sent: ${reason}`);
    const dismiss = el("button", "link-button", "Dismiss");
    dismiss.type = "button";
    dismiss.addEventListener("click", () => {
      this.entries.splice(this.entries.indexOf(entry), 1);
      entry.el.remove();
      this.hooks.dismissed();
    });
    entry.el.querySelector(".bubble").append(dismiss);
    this.persist();
  }

  /** The in-flight message was not processed (rate_limited, unavailable): send it later. */
  retryInFlight(delayMs, pump) {
    if (!this.inFlight) return;
    this.settle();
    clearTimeout(this.resendTimer);
    this.resendTimer = setTimeout(() => {
      this.resendTimer = 0;
      pump();
    }, delayMs);
  }
}
