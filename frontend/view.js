// DOM building blocks of the client. User text is only ever set as textContent (or as the
// href of a checked http(s) link): never parsed as HTML.

import { dayLabel, linkify, sameDay } from "./text.js";

const GROUP_MS = 5 * 60_000; // messages of one author this close share one header

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function avatar(name) {
  const node = el("span", "avatar", [...name][0]?.toUpperCase() ?? "?");
  node.setAttribute("aria-hidden", "true");
  node.dataset.hue = String(Math.round(hue(name) / 30) % 12);
  return node;
}

export function timeElement(ts) {
  const when = new Date(Number.isFinite(ts) ? ts : Date.now());
  const node = el("time", "time", when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  node.dateTime = when.toISOString();
  node.title = when.toLocaleString();
  return node;
}

/** The text of a message, with http(s) links clickable and everything else plain. */
export function textElement(text) {
  const p = el("p", "text");
  p.dir = "auto";
  for (const part of linkify(text)) {
    if (part.href) {
      const a = el("a", "", part.text);
      a.href = part.href;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      p.append(a);
    } else {
      p.append(part.text);
    }
  }
  return p;
}

function authorElement(name, own) {
  const meta = el("div", "meta");
  const author = el("span", "author", name);
  author.dir = "auto";
  meta.append(author);
  if (own) meta.append(el("span", "you-tag", " (you)"));
  return meta;
}

/** A confirmed message: `frame` as the server sent it. */
export function messageElement(frame, own) {
  const item = el("li", own ? "message own" : "message");
  item.dataset.testid = "message";
  item.dataset.id = frame.id;
  item.dataset.name = frame.name;
  item.dataset.ts = String(frame.ts);
  const divider = el("div", "day-divider");
  divider.hidden = true;
  divider.setAttribute("role", "separator");
  item.append(divider, avatar(frame.name));
  const bubble = el("div", "bubble");
  const meta = authorElement(frame.name, own);
  meta.append(timeElement(frame.ts));
  bubble.append(meta, textElement(frame.text));
  item.append(bubble);
  return item;
}

/** An outbox entry, shown below the conversation until its echo comes back. */
export function pendingElement(name, text, nonce) {
  const item = el("li", "message own pending");
  item.dataset.testid = "pending-message";
  item.dataset.nonce = nonce;
  item.append(avatar(name));
  const bubble = el("div", "bubble");
  const meta = authorElement(name, true);
  meta.append(el("span", "delivery", "pending"));
  bubble.append(meta, textElement(text));
  item.append(bubble);
  return item;
}

/**
 * Day separators and author grouping over a message list, recomputed after each change
 * (a thousand items at most: cheap). `firstUnread` is the id to mark "New messages" at.
 */
export function relayout(list, firstUnread) {
  let prev = null;
  const now = Date.now();
  for (const item of list.children) {
    if (item.dataset.testid !== "message") continue;
    const ts = Number(item.dataset.ts);
    const newDay = !prev || !sameDay(Number(prev.dataset.ts), ts);
    const unreadHere = firstUnread !== null && item.dataset.id === firstUnread;
    const divider = item.firstElementChild;
    if (newDay || unreadHere) {
      const label = [newDay ? dayLabel(ts, now) : "", unreadHere ? "New messages" : ""];
      const text = label.filter(Boolean).join(" · ");
      if (divider.textContent !== text) divider.textContent = text;
      divider.hidden = false;
      divider.classList.toggle("unread", unreadHere);
    } else if (!divider.hidden) {
      divider.hidden = true;
    }
    const grouped =
      !newDay &&
      !unreadHere &&
      prev.dataset.name === item.dataset.name &&
      ts - Number(prev.dataset.ts) < GROUP_MS;
    item.classList.toggle("grouped", grouped);
    prev = item;
  }
}
