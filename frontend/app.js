// webchat browser client: vanilla JS, no build step. Speaks ../shared/PROTOCOL.md, version 1.
//
// Delivery model:
// - Every message the user writes goes into the outbox with a nonce and stays there, shown as
//   pending, until the server's echo (a `message` frame carrying that nonce) comes back. The
//   outbox is sent one frame at a time, so an error frame always belongs to the message in
//   flight; after a reconnect it is resent with the same nonces, which the server deduplicates.
// - Messages are shown in order of arrival and never twice: ids already seen are dropped.
// - Reconnects use exponential backoff with full jitter and pass the last id seen as `since`.

const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ID_RE = /^[0-9]{1,20}-[0-9]{1,20}$/;
const MAX_NAME = 32;
const NAME_KEY = "webchat.name";
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const ACK_TIMEOUT_MS = 10_000; // no echo this long: the socket is presumed dead
const MAX_RENDERED = 1000; // messages kept in the DOM; older ones are removed
const NOTICE_MS = 6000;

const $ = (id) => document.getElementById(id);
const ui = {
  app: document.querySelector(".app"),
  roomName: $("room-name"),
  status: document.querySelector("[data-testid=status]"),
  statusText: $("status-text"),
  retry: $("retry-button"),
  join: $("join"),
  joinForm: $("join-form"),
  nameInput: $("name-input"),
  nameError: $("name-error"),
  chat: $("chat"),
  messages: $("messages"),
  notice: $("notice"),
  composer: $("composer"),
  input: $("message-input"),
  memberCount: $("member-count"),
  members: $("members"),
};

const state = {
  room: "lobby",
  name: "", // what we asked for; the welcome says what we got
  me: "",
  ws: null,
  open: false, // a welcome arrived on the current socket
  attempt: 0,
  retryTimer: 0,
  lastId: null,
  seen: new Set(),
  outbox: [], // {nonce, text, el, failed}, oldest first
  inFlight: null, // the outbox entry sent and not yet answered
  ackTimer: 0,
  resendTimer: 0,
  members: new Set(),
  memberCount: 0,
  unread: 0,
  noticeTimer: 0,
};

// Until the welcome says otherwise, PROTOCOL.md's defaults.
let limits = { max_text: 2000, rate_per_s: 10, burst: 20 };

// --- helpers ------------------------------------------------------------------------------

function codePoints(text) {
  return [...text].length;
}

function validName(raw) {
  const name = raw.trim();
  if (!name) return [null, "Please enter a name."];
  if (codePoints(name) > MAX_NAME) return [null, `At most ${MAX_NAME} characters, please.`];
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return [null, "No control characters, please."];
  return [name, ""];
}

function makeNonce() {
  // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `c-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // user text is never parsed as HTML
  return node;
}

function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function avatar(name) {
  const node = el("span", "avatar", [...name][0]?.toUpperCase() ?? "?");
  node.setAttribute("aria-hidden", "true");
  node.style.setProperty("--hue", String(hue(name)));
  return node;
}

function timeElement(ts) {
  const when = new Date(Number.isFinite(ts) ? ts : Date.now());
  const node = el(
    "time",
    "time",
    when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
  );
  node.dateTime = when.toISOString();
  node.title = when.toLocaleString();
  return node;
}

// --- status and notices --------------------------------------------------------------------

function setStatus(kind, text, { retry = false } = {}) {
  ui.status.dataset.state = kind;
  ui.statusText.textContent = text;
  ui.retry.hidden = !retry;
}

/** Show a transient notice; `topic` lets a later event withdraw it (see clearNotice). */
function notify(text, kind = "info", topic = "") {
  clearTimeout(state.noticeTimer);
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.dataset.topic = topic;
  state.noticeTimer = setTimeout(clearNotice, NOTICE_MS);
}

function clearNotice(topic) {
  if (topic !== undefined && ui.notice.dataset.topic !== topic) return;
  clearTimeout(state.noticeTimer);
  ui.notice.textContent = "";
}

// --- the message list ------------------------------------------------------------------------

function nearBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

/** Insert a confirmed item after every other confirmed one, before the pending ones. */
function insertConfirmed(node) {
  const stick = nearBottom();
  ui.messages.insertBefore(node, ui.messages.querySelector(".pending"));
  const rendered = ui.messages.querySelectorAll("[data-testid=message]");
  for (let i = 0; i < rendered.length - MAX_RENDERED; i++) rendered[i].remove();
  if (stick) scrollToBottom();
}

function messageElement(frame, { pending = false } = {}) {
  const own = pending || frame.name === state.me;
  const item = el("li", `message${own ? " own" : ""}${pending ? " pending" : ""}`);
  item.append(avatar(frame.name));
  const bubble = el("div", "bubble");
  const meta = el("div", "meta");
  meta.append(el("span", "author", own ? `${frame.name} (you)` : frame.name));
  if (pending) {
    meta.append(el("span", "delivery", "pending"));
  } else {
    meta.append(timeElement(frame.ts));
  }
  bubble.append(meta, el("p", "text", frame.text));
  item.append(bubble);
  return item;
}

function showMessage(frame) {
  if (typeof frame.id !== "string" || state.seen.has(frame.id)) return;
  state.seen.add(frame.id);
  if (ID_RE.test(frame.id)) state.lastId = frame.id;
  const item = messageElement(frame);
  item.dataset.testid = "message";
  item.dataset.id = frame.id;
  insertConfirmed(item);
  if (document.hidden) {
    state.unread += 1;
    updateTitle();
  }
}

function showSystem(text, testid) {
  const item = el("li", "system", text);
  if (testid) item.dataset.testid = testid;
  insertConfirmed(item);
}

function updateTitle() {
  const unread = state.unread ? `(${state.unread}) ` : "";
  document.title = `${unread}#${state.room} · webchat`;
}

// --- members -----------------------------------------------------------------------------------

function renderMembers() {
  const names = [...state.members].sort((a, b) => {
    if (a === state.me) return -1;
    if (b === state.me) return 1;
    return a.localeCompare(b);
  });
  const items = names.map((name) => {
    const item = el("li", name === state.me ? "member me" : "member");
    item.append(avatar(name), el("span", "member-name", name));
    if (name === state.me) item.append(el("span", "you", "you"));
    return item;
  });
  const hidden = state.memberCount - names.length;
  if (hidden > 0) items.push(el("li", "member more", `and ${hidden} more`));
  ui.members.replaceChildren(...items);
  ui.memberCount.textContent = String(state.memberCount);
  ui.memberCount.title = `${state.memberCount} online`;
}

function onPresence(frame) {
  if (typeof frame.name !== "string") return;
  if (frame.event === "join" && !state.members.has(frame.name)) {
    state.members.add(frame.name);
    state.memberCount += 1;
  } else if (frame.event === "leave" && state.members.delete(frame.name)) {
    state.memberCount = Math.max(state.members.size, state.memberCount - 1);
  }
  renderMembers();
}

// --- the outbox --------------------------------------------------------------------------------

function queueMessage(text) {
  const entry = { nonce: makeNonce(), text, el: null, failed: false };
  entry.el = messageElement({ name: state.me || state.name, text }, { pending: true });
  entry.el.dataset.testid = "pending-message";
  entry.el.dataset.nonce = entry.nonce;
  ui.messages.append(entry.el);
  scrollToBottom();
  state.outbox.push(entry);
  pump();
}

function setDelivery(entry, text) {
  const label = entry.el.querySelector(".delivery");
  if (label) label.textContent = text;
}

/** Send the oldest unsent outbox entry, if the socket is open and nothing is in flight. */
function pump() {
  for (const entry of state.outbox) {
    if (!entry.failed) setDelivery(entry, state.open ? "sending…" : "pending");
  }
  if (!state.open || state.inFlight || state.resendTimer) return;
  const entry = state.outbox.find((e) => !e.failed);
  if (!entry) return;
  state.inFlight = entry;
  state.ws.send(JSON.stringify({ type: "message", text: entry.text, nonce: entry.nonce }));
  state.ackTimer = setTimeout(() => {
    // The socket accepted the frame but nothing came back: treat the connection as dead.
    abandonSocket("no answer from the server");
  }, ACK_TIMEOUT_MS);
}

function settleInFlight() {
  clearTimeout(state.ackTimer);
  state.ackTimer = 0;
  state.inFlight = null;
}

function acknowledge(frame) {
  if (typeof frame.nonce !== "string" || frame.name !== state.me) return;
  const index = state.outbox.findIndex((e) => e.nonce === frame.nonce);
  if (index < 0) return;
  const [entry] = state.outbox.splice(index, 1);
  entry.el.remove();
  if (state.inFlight === entry) settleInFlight();
  pump();
}

/** The in-flight message was refused for good (bad_message): mark it, move on. */
function failInFlight(reason) {
  const entry = state.inFlight;
  if (!entry) return;
  settleInFlight();
  entry.failed = true;
  entry.el.classList.add("failed");
  entry.el.dataset.state = "failed";
  setDelivery(entry, `not sent: ${reason}`);
  const dismiss = el("button", "link-button", "Dismiss");
  dismiss.type = "button";
  dismiss.addEventListener("click", () => {
    state.outbox.splice(state.outbox.indexOf(entry), 1);
    entry.el.remove();
    ui.input.focus();
  });
  entry.el.querySelector(".bubble").append(dismiss);
  pump();
}

/** The in-flight message was not processed (rate_limited, unavailable): send it again later. */
function retryInFlight(delayMs) {
  if (!state.inFlight) return;
  settleInFlight();
  clearTimeout(state.resendTimer);
  state.resendTimer = setTimeout(() => {
    state.resendTimer = 0;
    pump();
  }, delayMs);
}

// --- the connection -----------------------------------------------------------------------------

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({ room: state.room, name: state.name });
  if (state.lastId) params.set("since", state.lastId);
  return `${scheme}//${location.host}/ws?${params}`;
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = 0;
  setStatus("connecting", state.attempt ? "Reconnecting…" : "Connecting…");
  let ws;
  try {
    ws = new WebSocket(socketUrl());
  } catch (error) {
    notify(`Cannot connect: ${error.message}`, "error");
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  ws.addEventListener("message", (event) => {
    if (state.ws === ws) onFrame(event.data);
  });
  ws.addEventListener("close", (event) => {
    if (state.ws === ws) onClose(event);
  });
}

/** Stop using the current socket at once and reconnect, without waiting for its close. */
function abandonSocket(why) {
  const ws = state.ws;
  if (!ws) return;
  state.ws = null;
  ws.close(4000, why.slice(0, 100));
  disconnected();
  notify(`Connection lost (${why}); reconnecting…`, "warning", "connection");
  scheduleReconnect();
}

function disconnected() {
  state.open = false;
  settleInFlight();
  clearTimeout(state.resendTimer);
  state.resendTimer = 0;
  pump();
}

function onClose(event) {
  const wasOpen = state.open;
  state.ws = null;
  // Why the last established connection ended (failed attempts do not count): diagnostics.
  if (wasOpen) ui.status.dataset.closeCode = String(event.code);
  disconnected();
  if (event.code === 1008) notify("Disconnected for sending too fast.", "error");
  else if (event.code === 1009) notify("That message was too large to send.", "error");
  else if (event.code === 1012) {
    notify("The server is restarting; reconnecting…", "warning", "connection");
  } else if (wasOpen) notify("Connection lost; reconnecting…", "warning", "connection");
  scheduleReconnect();
}

function scheduleReconnect() {
  // Full jitter: anywhere from 0 to the exponential ceiling, so clients spread out.
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delay = Math.random() * ceiling;
  state.attempt = Math.min(state.attempt + 1, 30);
  const seconds = Math.max(1, Math.round(delay / 1000));
  setStatus("closed", `Offline · retrying in ${seconds} s`, { retry: true });
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, delay);
}

function onFrame(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  if (frame === null || typeof frame !== "object") return;
  switch (frame.type) {
    case "welcome":
      onWelcome(frame);
      break;
    case "message":
      showMessage(frame);
      acknowledge(frame);
      break;
    case "presence":
      onPresence(frame);
      break;
    case "gap":
      showSystem("Some earlier messages may be missing.", "gap");
      notify("Some messages may be missing: the history no longer reaches back that far.");
      break;
    case "error":
      onError(frame);
      break;
    default:
      break; // frame types from a newer server are ignored
  }
}

function onWelcome(frame) {
  state.open = true;
  state.attempt = 0;
  state.me = typeof frame.name === "string" ? frame.name : state.name;
  if (frame.limits && typeof frame.limits === "object") limits = { ...limits, ...frame.limits };
  if (Number.isInteger(limits.max_text) && limits.max_text > 0) {
    ui.input.maxLength = limits.max_text;
  }
  state.members = new Set(Array.isArray(frame.members) ? frame.members : []);
  state.members.add(state.me);
  state.memberCount = Math.max(state.members.size, Number(frame.member_count) || 0);
  renderMembers();
  setStatus("open", `Connected as ${state.me}`);
  clearNotice("connection");
  pump(); // resend what the outbox holds, with the same nonces
}

function onError(frame) {
  const code = String(frame.code ?? "error");
  const message = typeof frame.message === "string" ? frame.message : code;
  switch (code) {
    case "rate_limited":
      notify("Slow down: messages are being sent too fast.", "warning");
      retryInFlight(Math.ceil(1000 / (Number(limits.rate_per_s) || 1)) + 100);
      break;
    case "unavailable":
      notify("The chat service is having trouble; your message will be retried.", "warning");
      retryInFlight(2000 + Math.random() * 3000);
      break;
    case "bad_message":
      notify(`Message refused: ${message}`, "error");
      failInFlight(message);
      break;
    default:
      notify(`Error (${code}): ${message}`, "error");
      break;
  }
}

// --- user input ----------------------------------------------------------------------------------

function send() {
  const text = ui.input.value.trim();
  if (!text) return;
  if (codePoints(text) > limits.max_text) {
    notify(`Messages are limited to ${limits.max_text} characters.`, "error");
    return;
  }
  ui.input.value = "";
  autosize();
  queueMessage(text);
}

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
}

function wireComposer() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
    ui.input.focus();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.input.addEventListener("input", autosize);
  ui.retry.addEventListener("click", () => {
    if (!state.ws) connect();
  });
  window.addEventListener("online", () => {
    if (!state.ws) connect();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.unread) {
      state.unread = 0;
      updateTitle();
    }
  });
}

// --- start -------------------------------------------------------------------------------------

function storedName() {
  try {
    return localStorage.getItem(NAME_KEY) ?? "";
  } catch {
    return ""; // storage disabled: ask every time
  }
}

function rememberName(name) {
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    // storage disabled: the name lasts for this page only
  }
}

function start(name) {
  state.name = name;
  ui.join.hidden = true;
  ui.chat.hidden = false;
  ui.input.placeholder = `Message #${state.room}`;
  wireComposer();
  connect();
  ui.input.focus();
}

function askName(error = "") {
  setStatus("closed", "Not connected");
  ui.join.hidden = false;
  ui.chat.hidden = true;
  ui.nameError.textContent = error;
  ui.nameInput.setAttribute("aria-invalid", error ? "true" : "false");
  ui.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const [name, problem] = validName(ui.nameInput.value);
    ui.nameError.textContent = problem;
    ui.nameInput.setAttribute("aria-invalid", problem ? "true" : "false");
    if (!name) {
      ui.nameInput.focus();
      return;
    }
    rememberName(name);
    start(name);
  });
  ui.nameInput.focus();
}

function main() {
  const params = new URLSearchParams(location.search);
  const room = params.get("room") ?? "lobby";
  if (!ROOM_RE.test(room)) {
    ui.roomName.textContent = "invalid room";
    setStatus("closed", "Room names are 1–64 letters, digits, _ or -.");
    return;
  }
  state.room = room;
  ui.roomName.textContent = `#${room}`;
  updateTitle();
  const fromUrl = params.get("name");
  if (fromUrl !== null) {
    const [name, problem] = validName(fromUrl);
    if (name) start(name);
    else askName(problem);
    return;
  }
  const [remembered] = validName(storedName());
  if (remembered) start(remembered);
  else askName();
}

main();
