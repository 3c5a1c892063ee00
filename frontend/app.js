// webchat browser client: vanilla JS modules, no build step. Speaks ../shared/PROTOCOL.md 1.1.
//
// This module is the shell: the name and key (or, in authenticated mode, the token source),
// the rooms this tab has joined (one RoomSession each, see session.js), switching between
// them, the room list, the composer, status, notices and screen-reader announcements.

import { RoomSession } from "./session.js";
import { load, save } from "./store.js";
import { makeKey, roomProblem, textProblem, trimWhiteSpace, validName, codePoints } from "./text.js";
import { TokenSource, apiFetch } from "./token.js";
import { avatar, el } from "./view.js";

const NAME_KEY = "webchat.name";
const KEY_KEY = "webchat.key";
const ROOMS_KEY = "webchat.rooms"; // rooms joined in this tab (sessionStorage)
const MAX_JOINED = 10; // sockets one tab keeps open; the least recently used room goes first
const ROOMS_POLL_MS = 30_000;
const NOTICE_MS = 6000;
const MAX_NOTICES = 3;

const $ = (id) => document.getElementById(id);
const ui = {
  roomsToggle: $("rooms-toggle"),
  unreadTotal: $("unread-total"),
  roomName: $("room-name"),
  status: document.querySelector("[data-testid=status]"),
  statusText: $("status-text"),
  retry: $("retry-button"),
  join: $("join"),
  joinForm: $("join-form"),
  nameInput: $("name-input"),
  nameError: $("name-error"),
  chat: $("chat"),
  roomsPanel: $("rooms-panel"),
  roomsClose: $("rooms-close"),
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  roomError: $("room-error"),
  joinedRooms: $("joined-rooms"),
  activeRooms: $("active-rooms"),
  activeEmpty: $("active-empty"),
  main: $("main"),
  conversations: $("conversations"),
  jump: $("jump"),
  jumpText: $("jump-text"),
  notices: $("notices"),
  composer: $("composer"),
  input: $("message-input"),
  messageLabel: $("message-label"),
  send: $("send-button"),
  counter: $("counter"),
  hint: $("composer-hint"),
  membersPanel: $("members-panel"),
  membersLabel: $("members-label"),
  memberCount: $("member-count"),
  members: $("members"),
  announcer: $("announcer"),
};

const app = {
  name: "",
  key: "",
  tokens: null, // authenticated mode: the TokenSource of the page's data-token-url
  sessions: new Map(), // room -> RoomSession, in the order they were joined
  used: [], // rooms, least recently shown first
  current: null,
  activeRooms: [], // from GET /api/rooms
  roomsTimer: 0,
  countdown: 0,
  started: false,
};

const phone = () => matchMedia("(max-width: 720px)").matches;
// Touch-first devices: Enter makes a new line there, the send button sends.
const touch = () => matchMedia("(hover: none) and (pointer: coarse)").matches;

// --- notices and announcements ----------------------------------------------------------

/** One notice per topic: a repeat refreshes it (with a count) instead of stacking. */
function notify(text, kind = "info", topic = text) {
  let item = ui.notices.querySelector(`[data-topic="${CSS.escape(topic)}"]`);
  if (!text) {
    item?.remove();
    return;
  }
  if (!item) {
    item = el("div", "notice");
    item.dataset.topic = topic;
    item.dataset.testid = "notice";
    const dismiss = el("button", "notice-close");
    dismiss.type = "button";
    dismiss.setAttribute("aria-label", "Dismiss");
    dismiss.append(el("span", "", "×"));
    dismiss.firstChild.setAttribute("aria-hidden", "true");
    dismiss.addEventListener("click", () => item.remove());
    item.append(el("span", "notice-text"), dismiss);
    ui.notices.append(item);
    while (ui.notices.children.length > MAX_NOTICES) ui.notices.firstElementChild.remove();
  }
  const repeat = item.dataset.text === text;
  item.dataset.text = text;
  item.dataset.kind = kind;
  item.dataset.count = repeat ? String(Number(item.dataset.count || 1) + 1) : "1";
  const count = Number(item.dataset.count);
  item.firstChild.textContent = count > 1 ? `${text} (×${count})` : text;
  clearTimeout(Number(item.dataset.timer));
  item.dataset.timer = String(setTimeout(() => item.remove(), kind === "error" ? 2 * NOTICE_MS : NOTICE_MS));
}

/** Read out politely by screen readers: connection changes, joins and leaves. */
function announce(text) {
  ui.announcer.textContent = "";
  setTimeout(() => {
    ui.announcer.textContent = text;
  }, 50);
}

// --- status ---------------------------------------------------------------------------------

function renderStatus() {
  const s = app.current;
  if (!s) return;
  let text;
  switch (s.state) {
    case "open":
      text = `Connected as ${s.me}`;
      break;
    case "waiting": {
      const seconds = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
      text = seconds > 0 ? `Offline · retrying in ${seconds} s` : "Offline · retrying…";
      break;
    }
    case "stopped":
      text = "Not connected";
      break;
    default:
      text = s.closeCode === null && s.attempt === 0 ? "Connecting…" : "Reconnecting…";
  }
  ui.status.dataset.state = s.state === "waiting" || s.state === "stopped" ? "closed" : s.state;
  if (s.closeCode !== null) ui.status.dataset.closeCode = String(s.closeCode);
  else delete ui.status.dataset.closeCode;
  if (s.state === "waiting") ui.status.dataset.retryAt = String(Math.round(s.retryAt));
  else delete ui.status.dataset.retryAt;
  if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
  ui.retry.hidden = s.state !== "waiting";
  const counting = s.state === "waiting";
  if (counting && !app.countdown) app.countdown = setInterval(renderStatus, 250);
  if (!counting && app.countdown) {
    clearInterval(app.countdown);
    app.countdown = 0;
  }
}

// --- members --------------------------------------------------------------------------------

function renderMembers() {
  const s = app.current;
  if (!s) return;
  // One entry per member: by user in authenticated mode, so two people of one name are two.
  const members = [...s.members].map(([id, name]) => ({ name, me: id === s.myId }));
  members.sort((a, b) => (a.me ? -1 : b.me ? 1 : a.name.localeCompare(b.name)));
  const items = members.map(({ name, me }) => {
    const item = el("li", me ? "member me" : "member");
    const label = el("span", "member-name", name);
    label.dir = "auto";
    item.append(avatar(name), label);
    if (me) item.append(el("span", "you", "you"));
    return item;
  });
  const hidden = s.memberCount - members.length;
  if (hidden > 0) items.push(el("li", "member more", `and ${hidden} more`));
  ui.members.replaceChildren(...items);
  ui.memberCount.textContent = String(s.memberCount);
  ui.membersPanel.dataset.stale = String(s.stale);
  ui.membersLabel.textContent = s.stale ? "Last known" : "Online";
  ui.memberCount.title = s.stale ? `${s.memberCount} when last connected` : `${s.memberCount} online`;
}

// --- rooms ------------------------------------------------------------------------------------

function roomLink(room) {
  const a = el("a", "room-link");
  a.href = `?room=${encodeURIComponent(room)}`;
  a.dataset.room = room;
  a.append(el("span", "room-hash", "#"), el("span", "room-label", room));
  a.addEventListener("click", (event) => {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    switchTo(room);
  });
  return a;
}

function memberBadge(count, stale) {
  const badge = el("span", "room-count", String(count));
  badge.title = `${count} ${count === 1 ? "member" : "members"}${stale ? " (last known)" : ""}`;
  badge.append(el("span", "visually-hidden", count === 1 ? " member" : " members"));
  return badge;
}

function renderRooms() {
  const joined = [];
  let unreadTotal = 0;
  for (const [room, s] of app.sessions) {
    const item = el("li", "room-item");
    item.dataset.room = room;
    item.dataset.testid = "joined-room";
    const link = roomLink(room);
    if (s === app.current) link.setAttribute("aria-current", "page");
    item.append(link, memberBadge(s.memberCount, s.stale));
    if (s.unread && s !== app.current) {
      unreadTotal += s.unread;
      const unread = el("span", "unread", s.unread > 99 ? "99+" : String(s.unread));
      unread.dataset.testid = "unread";
      unread.append(el("span", "visually-hidden", " unread"));
      link.append(unread);
    }
    if (app.sessions.size < 2) {
      joined.push(item);
      continue; // the last room cannot be left
    }
    const leave = el("button", "icon-button leave");
    leave.type = "button";
    leave.setAttribute("aria-label", `Leave #${room}`);
    leave.append(el("span", "", "×"));
    leave.firstChild.setAttribute("aria-hidden", "true");
    leave.addEventListener("click", () => leaveRoom(room));
    item.append(leave);
    joined.push(item);
  }
  ui.joinedRooms.replaceChildren(...joined);
  const active = app.activeRooms
    .filter((r) => !app.sessions.has(r.room))
    .map((r) => {
      const item = el("li", "room-item");
      item.dataset.room = r.room;
      item.dataset.testid = "active-room";
      item.append(roomLink(r.room), memberBadge(r.member_count, false));
      return item;
    });
  ui.activeRooms.replaceChildren(...active);
  ui.activeEmpty.hidden = active.length > 0;
  ui.unreadTotal.hidden = unreadTotal === 0;
  ui.unreadTotal.textContent = unreadTotal > 99 ? "99+" : String(unreadTotal);
  ui.roomsToggle.setAttribute("aria-label", unreadTotal ? `Rooms, ${unreadTotal} unread` : "Rooms");
  const room = app.current ? `#${app.current.room}` : "webchat";
  document.title = `${unreadTotal ? `(${unreadTotal}) ` : ""}${room} · webchat`;
}

async function refreshRooms() {
  clearTimeout(app.roomsTimer);
  // Every open page polls: spread them out, and not while nobody looks.
  app.roomsTimer = setTimeout(refreshRooms, ROOMS_POLL_MS * (0.8 + 0.4 * Math.random()));
  if (document.hidden) return;
  try {
    const response = await apiFetch(app.tokens, "/api/rooms");
    if (!response.ok) return;
    const body = await response.json();
    if (Array.isArray(body.rooms)) {
      app.activeRooms = body.rooms.filter((r) => r && typeof r.room === "string");
      renderRooms();
    }
  } catch {
    // offline: keep the last list
  }
}

function persistRooms() {
  save("session", ROOMS_KEY, [...app.sessions.keys()]);
}

function sessionFor(room) {
  let s = app.sessions.get(room);
  if (s) return s;
  s = new RoomSession(room, hooks);
  app.sessions.set(room, s);
  ui.conversations.append(s.element);
  s.start();
  // Too many rooms open: leave the least recently shown one that has nothing left to send.
  if (app.sessions.size > MAX_JOINED) {
    const victim = app.used.find((r) => r !== room && app.sessions.get(r)?.outbox.size === 0);
    if (victim) leaveRoom(victim);
  }
  persistRooms();
  return s;
}

function switchTo(room, { push = true } = {}) {
  closeSheet();
  if (app.current?.room === room) return;
  const previous = app.current;
  if (previous) {
    saveDraft();
    previous.hide();
  }
  const s = sessionFor(room);
  app.current = s;
  app.used = [...app.used.filter((r) => r !== room), room];
  s.show();
  if (!document.hidden) s.markRead();
  ui.input.value = s.draft;
  autosize();
  renderComposer();
  ui.roomName.textContent = `#${room}`;
  ui.messageLabel.textContent = `Message #${room}`;
  ui.input.placeholder = `Message #${room}`;
  if (push) {
    const url = new URL(location.href);
    url.searchParams.set("room", room);
    url.searchParams.delete("name");
    if (url.href !== location.href) history.pushState({ room }, "", url);
  }
  renderStatus();
  renderMembers();
  renderJump();
  renderRooms();
  if (previous) refreshRooms(); // counts change with who moves where
  if (previous && !phone()) ui.input.focus();
}

function leaveRoom(room) {
  const s = app.sessions.get(room);
  if (!s) return;
  s.stop();
  app.sessions.delete(room);
  app.used = app.used.filter((r) => r !== room);
  persistRooms();
  if (app.current === s) {
    app.current = null;
    switchTo(app.used.at(-1) ?? app.sessions.keys().next().value);
  }
  renderRooms();
}

// --- the phone sheet --------------------------------------------------------------------

function openSheet() {
  ui.roomsPanel.dataset.open = "true";
  ui.roomsToggle.setAttribute("aria-expanded", "true");
  ui.main.inert = true;
  ui.membersPanel.inert = true;
  refreshRooms();
  ui.roomsClose.focus();
}

function closeSheet() {
  if (ui.roomsPanel.dataset.open !== "true") return;
  delete ui.roomsPanel.dataset.open;
  ui.roomsToggle.setAttribute("aria-expanded", "false");
  ui.main.inert = false;
  ui.membersPanel.inert = false;
  ui.roomsToggle.focus();
}

// --- the composer ---------------------------------------------------------------------------

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
}

/** The live counter: shown near the limit, says by how much it is exceeded; never cuts. */
function renderComposer() {
  const max = Number(app.current?.limits.max_text) || 2000;
  const text = ui.input.value;
  const count = codePoints(trimWhiteSpace(text));
  const problem = textProblem(text, max);
  const over = count > max;
  const near = count >= max - Math.min(200, Math.ceil(max / 10));
  let message = "";
  if (over) message = `${count - max} ${count - max === 1 ? "character" : "characters"} over the limit of ${max}: shorten it to send.`;
  else if (problem && problem !== "empty") message = problem;
  else if (near) message = `${max - count} ${max - count === 1 ? "character" : "characters"} left.`;
  const state = over || (problem && problem !== "empty") ? "over" : near ? "near" : "";
  const wasOver = ui.counter.dataset.state === "over";
  ui.counter.textContent = message;
  ui.counter.hidden = !message;
  ui.counter.dataset.state = state;
  ui.send.disabled = state === "over";
  ui.input.setAttribute("aria-invalid", String(state === "over"));
  if (state === "over" && !wasOver) announce(message);
}

function saveDraft() {
  const s = app.current;
  if (!s) return;
  s.draft = ui.input.value;
  save("session", s.key("draft"), s.draft);
}

function sendFromComposer() {
  const s = app.current;
  if (!s) return;
  const problem = textProblem(ui.input.value, Number(s.limits.max_text) || 2000);
  if (problem === "empty") return;
  if (problem) {
    renderComposer();
    ui.counter.classList.remove("shake");
    void ui.counter.offsetWidth; // restart the animation
    ui.counter.classList.add("shake");
    announce(`Not sent: ${ui.counter.textContent}`);
    return;
  }
  s.send(trimWhiteSpace(ui.input.value));
  ui.input.value = "";
  saveDraft();
  autosize();
  renderComposer();
}

function renderJump() {
  const n = app.current?.newBelow ?? 0;
  ui.jump.hidden = n === 0;
  ui.jumpText.textContent = n === 1 ? "1 new message" : `${n} new messages`;
}

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendFromComposer();
    if (!touch()) ui.input.focus();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || touch()) return;
    event.preventDefault();
    sendFromComposer();
  });
  ui.input.addEventListener("input", () => {
    autosize();
    renderComposer();
    saveDraft();
  });
  ui.hint.textContent = touch()
    ? "Enter starts a new line; the Send button sends. Messages written offline are sent when the connection is back."
    : "Enter sends, Shift+Enter starts a new line. Messages written offline are sent when the connection is back.";
  ui.retry.addEventListener("click", () => app.current?.reconnectNow());
  ui.jump.addEventListener("click", () => {
    app.current?.scrollToBottom();
    renderJump();
  });
  ui.roomsToggle.addEventListener("click", () => {
    if (ui.roomsPanel.dataset.open === "true") closeSheet();
    else openSheet();
  });
  ui.roomsClose.addEventListener("click", closeSheet);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeSheet();
  });
  ui.roomForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = ui.roomInput.value.trim().replace(/^#/, "");
    const problem = roomProblem(room);
    ui.roomError.textContent = problem;
    ui.roomInput.setAttribute("aria-invalid", String(Boolean(problem)));
    if (problem) {
      ui.roomInput.focus();
      return;
    }
    ui.roomInput.value = "";
    switchTo(room);
  });
  ui.roomInput.addEventListener("input", () => {
    if (ui.roomError.textContent) {
      ui.roomError.textContent = "";
      ui.roomInput.setAttribute("aria-invalid", "false");
    }
  });
  window.addEventListener("popstate", () => {
    const room = new URLSearchParams(location.search).get("room") ?? "lobby";
    if (!roomProblem(room)) switchTo(room, { push: false });
  });
  window.addEventListener("online", () => {
    for (const s of app.sessions.values()) s.reconnectNow();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    for (const s of app.sessions.values()) s.reconnectNow();
    app.current?.markRead();
    renderRooms();
    refreshRooms();
  });
}

// --- the session hooks ----------------------------------------------------------------------

const hooks = {
  identity: () => (app.tokens ? { name: app.tokens.name, key: "" } : { name: app.name, key: app.key }),
  get tokens() {
    return app.tokens;
  },
  api: (path) => apiFetch(app.tokens, path),
  notify,
  announce,
  reading: (s) => s === app.current && !document.hidden,
  changed(s, what) {
    if (what === "focus-composer") {
      ui.input.focus();
      return;
    }
    if (s === app.current) {
      if (what === "status") renderStatus();
      if (what === "members") renderMembers();
      if (what === "below") renderJump();
      if (what === "status" && s.state === "open") renderComposer(); // limits may have changed
    }
    if (what === "members" || what === "unread" || what === "status") renderRooms();
  },
  fatal(s, code, message) {
    if (code === "name_taken") {
      for (const other of app.sessions.values()) other.state = "stopped";
      askName(`“${app.name}” is already used in #${s.room} by someone else. Please pick another name.`);
      return;
    }
    if (code === "forbidden_room") {
      notify(`You do not have access to #${s.room}.`, "error", `fatal-${s.room}`);
    } else if (code === "unauthorized") {
      notify("This chat needs you to sign in, and this page has no token source.", "error", "fatal");
    } else {
      notify(`Cannot join #${s.room}: ${message}`, "error", `fatal-${s.room}`);
    }
    if (s === app.current) renderStatus();
  },
};

// --- names and start --------------------------------------------------------------------------

function askName(error = "") {
  ui.join.hidden = false;
  ui.chat.hidden = true;
  ui.status.dataset.state = "closed";
  ui.statusText.textContent = "Not connected";
  ui.retry.hidden = true;
  if (app.name) ui.nameInput.value = app.name;
  ui.nameError.textContent = error;
  ui.nameInput.setAttribute("aria-invalid", error ? "true" : "false");
  ui.nameInput.focus();
  ui.nameInput.select();
}

function onJoin(event) {
  event.preventDefault();
  const [name, problem] = validName(ui.nameInput.value);
  ui.nameError.textContent = problem;
  ui.nameInput.setAttribute("aria-invalid", problem ? "true" : "false");
  if (!name) {
    ui.nameInput.focus();
    return;
  }
  app.name = name;
  save("local", NAME_KEY, name);
  ui.join.hidden = true;
  ui.chat.hidden = false;
  if (!app.started) {
    begin();
    return;
  }
  for (const s of app.sessions.values()) s.restart();
  renderStatus();
  if (!phone()) ui.input.focus();
}

function begin() {
  app.started = true;
  const params = new URLSearchParams(location.search);
  const wanted = params.get("room") ?? "lobby";
  const problem = roomProblem(wanted);
  const room = problem ? "lobby" : wanted;
  if (problem) notify(`“${wanted}” is not a room name. ${problem}`, "error", "bad-room");
  for (const other of load("session", ROOMS_KEY, [])) {
    if (typeof other === "string" && !roomProblem(other) && other !== room) sessionFor(other);
  }
  // Links are shared: the room stays in the URL, the name does not.
  const url = new URL(location.href);
  url.searchParams.set("room", room);
  url.searchParams.delete("name");
  history.replaceState({ room }, "", url);
  switchTo(room, { push: false });
  refreshRooms();
  if (!phone()) ui.input.focus();
}

function main() {
  wire();
  ui.joinForm.addEventListener("submit", onJoin);
  const tokenUrl = document.documentElement.dataset.tokenUrl;
  if (tokenUrl) {
    // Authenticated mode: the name is the token's; no prompt, no key.
    app.tokens = new TokenSource(tokenUrl);
    ui.join.hidden = true;
    ui.chat.hidden = false;
    begin();
    return;
  }
  app.key = load("local", KEY_KEY, "");
  if (!/^[A-Za-z0-9_-]{16,128}$/.test(app.key)) {
    app.key = makeKey();
    save("local", KEY_KEY, app.key);
  }
  const fromUrl = new URLSearchParams(location.search).get("name");
  const [name, problem] = validName(fromUrl ?? load("local", NAME_KEY, "") ?? "");
  if (!name) {
    askName(fromUrl !== null ? problem : "");
    return;
  }
  app.name = name;
  save("local", NAME_KEY, name);
  ui.join.hidden = true;
  ui.chat.hidden = false;
  begin();
}

main();
