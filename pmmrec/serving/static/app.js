// The pmmrec page: build a history (a dataset user, or items found by title), see the top-k, add an item live.
// Plain JavaScript against the server's own API; no build step. Text from the server is set with textContent only.
"use strict";

const state = { history: [], userId: null, userLength: 0, lastAdded: null, health: null };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, {
    headers: { "Content-Type": "application/json" },
    ...options,
  });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    throw new Error(`${response.status}: ${body.detail || response.statusText}`);
  }
  return body;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function itemRow(item, { rank = null, score = null, action = null } = {}) {
  const li = document.createElement("li");
  li.dataset.itemId = item.item_id;
  if (rank !== null) {
    const r = document.createElement("span");
    r.className = "rank";
    r.textContent = rank;
    li.append(r);
  }
  if (item.image_url) {
    const img = document.createElement("img");
    img.src = item.image_url;
    img.alt = "";
    img.loading = "lazy";
    li.append(img);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = item.text + " ";
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = item.item_id;
  text.append(id);
  if (item.added) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "added live";
    text.append(" ", badge);
  }
  li.append(text);
  if (score !== null) {
    const s = document.createElement("span");
    s.className = "score";
    s.textContent = score.toFixed(3);
    li.append(s);
  }
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small";
    button.textContent = action.label;
    button.addEventListener("click", action.onClick);
    li.append(button);
  }
  return li;
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren(
    ...state.history.map((item, position) =>
      itemRow(item, {
        action: {
          label: "remove",
          onClick: () => {
            state.history.splice(position, 1);
            state.userId = null;
            historyChanged();
          },
        },
      }),
    ),
  );
  $("history-empty").hidden = state.history.length > 0;
  $("user-note").textContent = state.userId
    ? `ranking for user ${state.userId}: their whole sequence (${state.userLength} items; the last ${state.history.length} shown)`
    : "";
}

let recommendTimer = null;
function historyChanged() {
  renderHistory();
  clearTimeout(recommendTimer);
  recommendTimer = setTimeout(recommend, 150);
}

async function recommend() {
  showError(null);
  if (!state.userId && state.history.length === 0) {
    $("results").replaceChildren();
    $("results-note").textContent = "build a history first";
    return;
  }
  const k = Number.parseInt($("k").value, 10) || 10;
  const body = { k, exclude_seen: $("exclude-seen").checked };
  if (state.userId) body.user_id = state.userId;
  else body.history = state.history.map((item) => item.item_id);
  try {
    const result = await api("/recommend", { method: "POST", body: JSON.stringify(body) });
    $("results").replaceChildren(...result.items.map((item) => itemRow(item, { rank: item.rank, score: item.score })));
    let note = `top ${result.items.length} of ${result.catalogue_size} items` +
      (result.excluded ? `, ${result.excluded} seen items excluded` : "");
    if (state.lastAdded) {
      const hit = result.items.find((item) => item.item_id === state.lastAdded);
      note += hit ? `; the item you added, ${state.lastAdded}, is at rank ${hit.rank}` :
        `; the item you added, ${state.lastAdded}, is not in this top ${k}`;
      const row = $("results").querySelector(`li[data-item-id="${CSS.escape(state.lastAdded)}"]`);
      if (row) row.classList.add("highlight");
    }
    $("results-note").textContent = note;
  } catch (error) {
    showError(error);
  }
}

let searchTimer = null;
function searchItems() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const query = $("item-search").value.trim();
    if (!query) {
      $("search-results").replaceChildren();
      return;
    }
    try {
      const result = await api(`/items?q=${encodeURIComponent(query)}&limit=10`);
      $("search-results").replaceChildren(
        ...result.items.map((item) =>
          itemRow(item, {
            action: {
              label: "add to history",
              onClick: () => {
                if (state.userId) state.history = [];
                state.userId = null;
                state.history.push(item);
                historyChanged();
              },
            },
          }),
        ),
      );
    } catch (error) {
      showError(error);
    }
  }, 150);
}

let userTimer = null;
function suggestUsers() {
  clearTimeout(userTimer);
  userTimer = setTimeout(async () => {
    try {
      const result = await api(`/users?q=${encodeURIComponent($("user-input").value.trim())}&limit=20`);
      $("user-options").replaceChildren(
        ...result.users.map((user) => {
          const option = document.createElement("option");
          option.value = user;
          return option;
        }),
      );
    } catch (error) {
      showError(error);
    }
  }, 150);
}

async function loadUser() {
  showError(null);
  const userId = $("user-input").value.trim();
  if (!userId) return;
  try {
    const user = await api(`/users/${encodeURIComponent(userId)}?last=20`);
    state.userId = user.user_id;
    state.userLength = user.length;
    state.history = user.history;
    historyChanged();
  } catch (error) {
    showError(error);
  }
}

function readFileAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addItem(event) {
  event.preventDefault();
  showError(null);
  const status = $("add-status");
  status.className = "";
  status.textContent = "encoding the item\u2026";
  const body = { item_id: $("new-id").value.trim(), text: $("new-text").value.trim() };
  const file = $("new-image").files[0];
  try {
    if (file) body.image_base64 = await readFileAsDataUrl(file);
    const item = await api("/items", { method: "POST", body: JSON.stringify(body) });
    state.lastAdded = item.item_id;
    status.className = "ok";
    status.textContent = `added ${item.item_id} (catalogue index ${item.index}, embedded from ${item.encoded_from.join(" + ")}); ` +
      "it is rankable now";
    $("add-form").reset();
    await recommend();
  } catch (error) {
    status.className = "error";
    status.textContent = String(error.message || error);
  }
}

async function start() {
  $("item-search").addEventListener("input", searchItems);
  $("user-input").addEventListener("input", suggestUsers);
  $("user-input").addEventListener("keydown", (event) => { if (event.key === "Enter") loadUser(); });
  $("user-load").addEventListener("click", loadUser);
  $("history-clear").addEventListener("click", () => {
    state.history = [];
    state.userId = null;
    historyChanged();
  });
  $("recommend").addEventListener("click", recommend);
  $("k").addEventListener("change", recommend);
  $("exclude-seen").addEventListener("change", recommend);
  $("add-form").addEventListener("submit", addItem);
  renderHistory();
  suggestUsers();
  try {
    const health = await api("/health");
    state.health = health;
    const components = Object.entries(health.model.manifest.components || {})
      .map(([slot, entry]) => `${slot}: ${entry.type}`).join(", ");
    $("model-summary").textContent =
      `${health.dataset}: ${health.items.toLocaleString()} items, ${health.users.toLocaleString()} users; ` +
      `model d=${health.dim}, ${health.modalities.join(" + ")} (${components})`;
    if (!health.can_add_items) {
      $("add-submit").disabled = true;
      $("add-status").textContent = health.add_items_refusal;
    } else if (health.new_items_need_image) {
      $("image-need").textContent = "(required: this model reads images)";
      $("new-image").required = true;
    }
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error);
  }
}

start();
