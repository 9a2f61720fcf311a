// sopr review console: live updates, lease heartbeats, SLA countdowns and
// keyboard shortcuts. Plain JavaScript, no build step; every page works
// without it (forms post and pages reload), this only makes them livelier.
(function () {
  "use strict";
  var body = document.body;
  var csrf = body.dataset.csrf || "";
  var page = body.dataset.page || "";

  function human(secs) {
    secs = Math.abs(Math.round(secs));
    if (secs < 60) return secs + " s";
    var mins = Math.floor(secs / 60);
    if (mins < 60) return mins + " min";
    var h = Math.floor(mins / 60), m = mins % 60;
    if (h < 24) return m ? h + " h " + m + " min" : h + " h";
    var d = Math.floor(h / 24), hh = h % 24;
    return hh ? d + " d " + hh + " h" : d + " d";
  }

  // SLA countdowns: "due in 12 min" / "breached 5 min ago", kept current.
  function tickSla() {
    var now = Date.now();
    document.querySelectorAll("time[data-due]").forEach(function (el) {
      var secs = (Date.parse(el.dataset.due) - now) / 1000;
      if (isNaN(secs)) return;
      el.textContent = secs >= 0 ? "due in " + human(secs) : "breached " + human(secs) + " ago";
      el.classList.toggle("bad", secs < 0);
    });
  }
  tickSla();
  setInterval(tickSla, 15000);

  // Live updates: the server says when the queue changed; the page fetches
  // what it shows. The browser reconnects the stream by itself.
  function onQueueChange(handler) {
    if (!window.EventSource || !csrf) return;
    var first = true;
    var source = new EventSource("/console/live");
    source.addEventListener("queue", function () {
      if (first) { first = false; return; }
      handler();
    });
  }

  if (page === "queue") {
    var queue = document.getElementById("queue");
    var refreshing = false, again = false;
    var refresh = function () {
      if (refreshing) { again = true; return; }
      refreshing = true;
      var selected = current() && current().dataset.id;
      fetch("/console/queue/rows" + window.location.search, { credentials: "same-origin" })
        .then(function (r) { if (r.ok) return r.text(); throw new Error(r.status); })
        .then(function (html) {
          queue.innerHTML = html;
          tickSla();
          if (selected) select(queue.querySelector('tr.row[data-id="' + selected + '"]'));
        })
        .catch(function () {})
        .finally(function () {
          refreshing = false;
          if (again) { again = false; refresh(); }
        });
    };
    onQueueChange(refresh);
  }

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("tr.row")); }
  function current() { return document.querySelector("tr.row.selected"); }
  function select(row) {
    rows().forEach(function (r) { r.classList.remove("selected"); });
    if (row) { row.classList.add("selected"); row.focus(); }
  }
  function move(delta) {
    var all = rows();
    if (!all.length) return;
    var at = all.indexOf(current());
    select(all[Math.max(0, Math.min(all.length - 1, at < 0 ? 0 : at + delta))]);
  }

  if (page === "item") {
    var item = document.getElementById("item");
    var id = item.dataset.id, version = item.dataset.version;
    var changed = document.getElementById("changed");
    var reply = document.getElementById("reply");
    var pristine = function () { return !reply || reply.value === reply.dataset.draft; };
    onQueueChange(function () {
      fetch("/console/items/" + id + "/state", { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) {
          if (!s || String(s.version) === version) return;
          // Reload when nothing typed would be lost; otherwise say so.
          if (pristine()) window.location.reload(); else changed.hidden = false;
        })
        .catch(function () {});
    });
    if (item.dataset.mine) {
      var every = Math.max(10, Math.floor(Number(item.dataset.leaseSecs || 600) / 3)) * 1000;
      setInterval(function () {
        fetch("/console/items/" + id + "/heartbeat", {
          method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }
        }).then(function (r) {
          if (r.status === 409 || r.status === 401) {
            changed.textContent = r.status === 401
              ? "Your session ended. Copy your reply, sign in again and reload."
              : "Your claim on this item ended (someone else took it or it was resolved). Copy your reply and reload.";
            changed.hidden = false;
          }
        }).catch(function () {});
      }, every);
    }
    if (reply) {
      reply.addEventListener("keydown", function (e) {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
          e.preventDefault();
          document.getElementById("reply-form").requestSubmit(document.getElementById("send"));
        }
      });
    }
  }

  // Keyboard shortcuts, ignored while typing.
  var help = null;
  function toggleHelp() {
    if (help) { help.remove(); help = null; return; }
    help = document.createElement("section");
    help.id = "help";
    help.setAttribute("role", "dialog");
    help.setAttribute("aria-label", "Keyboard shortcuts");
    var keys = [["n", "claim the next item"], ["j / k", "move in the queue"], ["Enter", "open the selected item"],
                ["c", "claim this item"], ["e", "edit the reply"], ["a", "approve the draft as is"],
                ["Ctrl+Enter", "send the reply"], ["Esc", "leave the editor"], ["?", "show or hide this help"]];
    var dl = document.createElement("dl");
    keys.forEach(function (k) {
      var dt = document.createElement("dt"); var kbd = document.createElement("kbd");
      kbd.textContent = k[0]; dt.appendChild(kbd);
      var dd = document.createElement("dd"); dd.textContent = k[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    var h = document.createElement("h2"); h.textContent = "Keyboard shortcuts";
    help.appendChild(h); help.appendChild(dl);
    body.appendChild(help);
  }
  function click(id) { var el = document.getElementById(id); if (el && !el.disabled) el.click(); }
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
    if (typing) { if (e.key === "Escape") t.blur(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    switch (e.key) {
      case "?": toggleHelp(); break;
      case "n":
        if (document.getElementById("claim-next")) click("claim-next");
        else if (document.getElementById("next-form")) document.getElementById("next-form").submit();
        break;
      case "j": if (page === "queue") move(1); break;
      case "k": if (page === "queue") move(-1); break;
      case "Enter":
        if (page === "queue" && current()) { var link = current().querySelector("a.item-link"); if (link) link.click(); }
        break;
      case "c": click("claim"); break;
      case "a": click("approve"); break;
      case "e": if (document.getElementById("reply")) { e.preventDefault(); document.getElementById("reply").focus(); } break;
      case "Escape": if (help) toggleHelp(); break;
      default: return;
    }
  });
})();
