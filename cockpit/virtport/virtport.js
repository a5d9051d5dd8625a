/* virtport's Cockpit page. Everything it shows comes from the virtport CLI (`--json`), everything it
 * changes goes through `virtport add`/`remove`, all by cockpit.spawn as superuser: no server of its
 * own, no second source of truth. VM names come from libvirt's read-only socket (`virsh -r`), so a
 * VM without forwards can get its first one. Live updates: the journal's directory is watched
 * (fswatch1: every hook, agent or command that changes a mapping writes the database's WAL), with
 * a slow poll as a fallback. Plain modern JavaScript, no build step. */
"use strict";

const SUPERUSER = { superuser: "require", err: "message" };
/* The command: `virtport` on the superuser's PATH, else where the package and install.sh put it. */
let VIRTPORT = "virtport";
const VIRTPORT_PLACES = ["/usr/sbin/virtport", "/usr/local/bin/virtport", "/usr/local/sbin/virtport", "/usr/bin/virtport"];
const DEFAULT_DB = "/var/lib/virtport/virtport.db";
const FALLBACK_POLL_MS = 10000;       // the change signal does the real work; this only catches VMs without forwards
const GUARD_POLL_MS = 2000;           // drop counters live in the kernel: no file changes with them

const state = {
    forwards: [], domains: [], running: new Set(), history: [], guards: [], doctor: null,
    view: "forwards", zoom: "all", historyMode: "timeline", watching: false,
};

/* -- helpers ------------------------------------------------------------------------------------ */

const $ = id => document.getElementById(id);

function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
        if (c === null || c === undefined || c === false) continue;
        e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
}

/* Runs a command; resolves (never rejects) with {status, out, err}: a refusal is an answer to show,
 * not an exception. `err` is stderr (cockpit's err: "message"), `status` the exit code. */
function run(args, options) {
    return new Promise(resolve => {
        let out = "";
        const proc = cockpit.spawn(args, Object.assign({}, SUPERUSER, options || {}));
        proc.stream(data => { out += data });
        proc.then(() => resolve({ status: 0, out, err: "" }))
            .catch(ex => resolve({
                status: typeof ex.exit_status === "number" ? ex.exit_status : -1,
                out,
                err: String(ex.message || ex.problem || ex).trim(),
                problem: ex.problem || null,
            }));
    });
}

async function runJSON(args, options) {
    const r = await run(args, options);
    if (r.out.trim() === "") {
        if (r.status !== 0) throw new Error(r.err || `${args.join(" ")}: exit ${r.status}`);
        return [];
    }
    return JSON.parse(r.out);
}

const pad = n => String(n).padStart(2, "0");
function localTime(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor(s % 86400 / 3600)} h`;
}
const ports = (a, b) => a === b ? `${a}` : `${a}-${b}`;
function hostText(m) {
    const addr = m.host_address ? (m.host_address.includes(":") ? `[${m.host_address}]` : m.host_address) : "*";
    return `${addr}:${ports(m.host_port_start, m.host_port_end)}${m.dev ? ` (dev ${m.dev})` : ""}`;
}
function guestText(m) {
    const p = ports(m.guest_port_start, m.guest_port_end);
    if (!m.guest_address) return `pending:${p}`;
    return `${m.guest_address.includes(":") ? `[${m.guest_address}]` : m.guest_address}:${p}`;
}
function isPending(m) { return !m.declared && (m.state === "pending" || !m.guest_address) }
/* What a pending forward waits for, in the words of virtport's log line. */
function pendingReason(m) {
    if (m.mac && m.network) return `NIC ${m.mac} on network ${m.network} has no address yet: completed when its DHCP lease appears`;
    if (m.mac) return `NIC ${m.mac} has no address yet: completed when its DHCP lease appears`;
    return "no guest address yet (no guest=, reservation or lease)";
}

function announce(id, text) {
    const region = $(id);
    region.textContent = "";
    if (text) region.append(...text.split("\n").filter(l => l).map(l => el("div", { class: "vp-line" }, l)));
}

/* -- theme: Cockpit's own setting (shell:style in localStorage), light or dark --------------------- */

function applyTheme() {
    let style = "auto";
    try { style = window.localStorage.getItem("shell:style") || "auto" } catch (e) { /* storage disabled */ }
    const dark = style === "dark" || (style === "auto" && window.matchMedia("(prefers-color-scheme: dark)").matches);
    document.documentElement.classList.toggle("pf-theme-dark", dark);
}

/* -- data ------------------------------------------------------------------------------------- */

async function loadDomains() {
    // libvirt's read-only socket, like `virtport completion`; without virsh the page still shows the journal.
    const all = await run(["virsh", "-r", "-q", "-c", "qemu:///system", "list", "--all", "--name"], { superuser: "try" });
    const active = await run(["virsh", "-r", "-q", "-c", "qemu:///system", "list", "--name"], { superuser: "try" });
    const names = s => s.out.split("\n").map(l => l.trim()).filter(l => l);
    state.domains = all.status === 0 ? names(all) : [];
    state.running = new Set(active.status === 0 ? names(active) : []);
}

/* What each VM declares (`virtport plan VM`: the live XML while it runs, else its definition), so
 * the page also shows forwards of VMs that do not run, and declared forwards a running VM does not
 * have. Each planned forward carries `refused` (plan runs qemu prepare's own check, read-only): the
 * one line why its VM's next start would be refused for it (a conflict naming the holder, a bound
 * host socket), or null. A VM whose metadata is invalid gets plan's one line. */
async function loadPlans() {
    const plans = {};
    await Promise.all(state.domains.map(async name => {
        const r = await run([VIRTPORT, "plan", name]);
        try {
            plans[name] = r.status === 0 ? { forwards: JSON.parse(r.out).forwards || [] } : { error: r.err.split("\n")[0] };
        } catch (e) {
            plans[name] = { error: `virtport plan: ${e.message}` };
        }
    }));
    state.plans = plans;
}

const sameForward = (a, b) => a.proto === b.proto && a.host_port_start === b.host_port_start && (a.host_address || "") === (b.host_address || "");

/* The rows of one VM: its active mappings (`list`), then what it declares but does not have. */
function vmRows(vm) {
    const active = state.forwards.filter(f => f.domain === vm);
    const plan = (state.plans || {})[vm];
    const declared = (plan && plan.forwards ? plan.forwards : []).filter(d => !active.some(a => sameForward(a, d))).map(d =>
        Object.assign({}, d, {
            domain: vm, declared: true, since: null,
            state: d.refused ? "refused" : state.running.has(vm) ? "not applied" : "declared",
        }));
    return active.concat(declared);
}

let refreshing = null, again = false;
/* One refresh at a time; a change signal during a refresh makes one more. */
function refresh() {
    if (refreshing) { again = true; return refreshing }
    refreshing = (async () => {
        try {
            const [forwards] = await Promise.all([runJSON([VIRTPORT, "list", "--json"]), loadDomains()]);
            await loadPlans();
            state.forwards = forwards;
            $("load-error").textContent = "";
            renderForwards();
            if (state.view === "history") await loadHistory();
            if (state.view === "guards") await loadGuards();
        } catch (e) {
            $("load-error").textContent = `virtport list: ${e.message}`;
        }
    })().finally(() => {
        refreshing = null;
        if (again) { again = false; refresh() }
    });
    return refreshing;
}

/* -- forwards ------------------------------------------------------------------------------------ */

function renderForwards() {
    const fDomain = $("filter-domain").value, fState = $("filter-state").value;
    const vms = [...new Set([...state.domains, ...state.forwards.map(f => f.domain)])].sort();
    syncSelect($("filter-domain"), vms, "All VMs");
    syncSelect($("add-domain"), vms, null);

    const applied = state.forwards.filter(f => !isPending(f) && f.state === "applied").length;
    const pending = state.forwards.filter(isPending).length;
    const notActive = vms.flatMap(vm => vmRows(vm).filter(f => f.declared));
    const refused = notActive.filter(f => f.state === "refused").length;
    $("vp-summary").textContent = `${applied} applied, ${pending} pending, ${refused} refused, `
        + `${notActive.length - refused} declared but not active; ${vms.length} VMs`;

    const table = el("table", { class: "pf-c-table pf-m-compact pf-m-grid-md vp-forwards", role: "grid", "aria-label": "Forwards per VM" },
        el("thead", {}, el("tr", {},
            ["VM", "Proto", "Host", "Guest", "State", "Since", ""].map(h => el("th", { scope: "col" }, h)))));
    let shown = 0;
    for (const vm of vms) {
        if (fDomain && vm !== fDomain) continue;
        const all = vmRows(vm);
        const rows = all.filter(f => {
            if (!fState) return true;
            if (fState === "pending") return isPending(f);
            if (fState === "applied") return !isPending(f) && f.state === "applied";
            if (fState === "refused") return f.state === "refused";
            if (fState === "declared") return !!f.declared && f.state !== "refused";
            return !isPending(f) && f.state !== "applied";
        }).sort((a, b) => a.proto.localeCompare(b.proto) || a.host_port_start - b.host_port_start);
        const running = state.running.has(vm);
        const body = el("tbody", { "data-domain": vm, class: "vp-vm" },
            el("tr", { class: "vp-vm-row" }, el("th", { colspan: "7", scope: "rowgroup" },
                el("span", { class: "vp-vm-name" }, vm), " ",
                el("span", { class: `pf-c-label pf-m-compact ${running ? "pf-m-green" : ""}` },
                    el("span", { class: "pf-c-label__content" }, state.domains.includes(vm) ? (running ? "running" : "shut off") : "not in libvirt")),
                " ", el("span", { class: "vp-muted" }, `${all.length} forward${all.length === 1 ? "" : "s"}`),
                (state.plans || {})[vm] && state.plans[vm].error
                    ? el("div", { class: "vp-error vp-plan-error" }, state.plans[vm].error) : null)));
        if (all.length === 0 && !fState) {
            body.append(el("tr", { class: "vp-empty" }, el("td", { colspan: "7" }, "No forwards declared.")));
        }
        for (const f of rows) {
            const pend = isPending(f);
            const since = f.since ? Date.parse(f.since) : NaN;
            const stateCell = f.declared
                ? el("td", { "data-label": "State" }, el("span", { class: `pf-c-label pf-m-compact ${f.state === "declared" ? "" : "pf-m-red"}` },
                    el("span", { class: "pf-c-label__content" }, f.state)),
                    el("div", { class: "vp-reason" }, f.state === "refused" ? f.refused
                        : f.state === "declared" ? "in the definition: applied when the VM starts"
                        : "declared, but the VM runs without it: see Doctor"))
                : pend
                ? el("td", { "data-label": "State" }, el("span", { class: "pf-c-label pf-m-orange pf-m-compact" }, el("span", { class: "pf-c-label__content" }, "pending")),
                    el("div", { class: "vp-reason" }, pendingReason(f)))
                : el("td", { "data-label": "State" }, el("span", { class: `pf-c-label pf-m-compact ${f.state === "applied" ? "pf-m-green" : "pf-m-red"}` },
                    el("span", { class: "pf-c-label__content" }, f.state)));
            body.append(el("tr", {
                class: "vp-forward", "data-domain": f.domain, "data-proto": f.proto, "data-host-port": String(f.host_port_start),
                "data-state": pend ? "pending" : f.state, "data-declared": f.declared ? "true" : null,
            },
            el("td", { "data-label": "VM" }, f.domain),
            el("td", { "data-label": "Proto" }, f.proto),
            el("td", { "data-label": "Host" }, hostText(f)),
            el("td", { "data-label": "Guest" }, guestText(f)),
            stateCell,
            el("td", { "data-label": "Since", title: f.since || "" }, isNaN(since) ? (f.since || "") : localTime(since)),
            el("td", { class: "pf-c-table__action" }, el("button", {
                type: "button", class: "pf-c-button pf-m-secondary pf-m-danger pf-m-small vp-remove",
                "aria-label": `Remove ${f.proto} ${f.host_port_start} of ${f.domain}`,
                onclick: () => removeForward(f),
            }, "Remove"))));
            shown++;
        }
        table.append(body);
    }
    const box = $("forwards");
    box.replaceChildren(vms.length ? table : el("p", { class: "vp-muted" }, "No VMs and no forwards."));
    box.dataset.rows = String(shown);
}

function syncSelect(select, values, allLabel) {
    const current = select.value;
    const want = (allLabel !== null ? [""] : []).concat(values);
    const have = [...select.options].map(o => o.value);
    if (want.length === have.length && want.every((v, i) => v === have[i])) return;
    select.replaceChildren(...want.map(v => el("option", { value: v }, v === "" ? allLabel : v)));
    if (want.includes(current)) select.value = current;
}

async function addForward(ev) {
    ev.preventDefault();
    const domain = $("add-domain").value, proto = $("add-proto").value, portSpec = $("add-ports").value.trim();
    const guest = $("add-guest").value.trim(), address = $("add-address").value.trim();
    announce("add-result", ""); announce("add-error", "");
    if (!domain) { announce("add-error", "Choose a virtual machine."); $("add-domain").focus(); return }
    if (!portSpec) {
        $("add-ports").setAttribute("aria-invalid", "true");
        announce("add-error", "Enter the host port (HOSTPORT[-END][:GUESTPORT]).");
        $("add-ports").focus();
        return;
    }
    $("add-ports").removeAttribute("aria-invalid");
    const args = [VIRTPORT, "add", domain, proto, portSpec];
    if (guest) args.push("--guest", guest);
    if (address) args.push("--address", address);
    const button = $("add-submit");
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    const r = await run(args);
    button.disabled = false;
    button.removeAttribute("aria-busy");
    showEdit(r, `virtport add ${domain} ${proto} ${portSpec}`);
    if (r.status === 0) $("add-ports").value = "";
    await refresh();
}

async function removeForward(f) {
    announce("add-result", ""); announce("add-error", "");
    const r = await run([VIRTPORT, "remove", f.domain, f.proto, String(f.host_port_start)]);
    showEdit(r, `virtport remove ${f.domain} ${f.proto} ${f.host_port_start}`);
    await refresh();
    if (r.status !== 0) $("add-error").focus();
}

/* The CLI's own lines: what it printed on success, its one line (and exit code) on refusal. */
function showEdit(r, what) {
    if (r.status === 0) {
        announce("add-result", r.out.trim() || `${what}: done`);
    } else {
        const line = r.err.split("\n").filter(l => l.trim())[0] || `exit ${r.status}`;
        announce("add-error", `${line} (exit ${r.status})`);
        $("add-error").setAttribute("tabindex", "-1");
    }
}

/* -- guards -------------------------------------------------------------------------------------- */

async function loadGuards() {
    try {
        state.guards = await runJSON([VIRTPORT, "list", "--guards", "--json"]);
        renderGuards();
        $("guards").dataset.refreshed = String(Date.now());
    } catch (e) {
        $("guards").replaceChildren(el("p", { class: "vp-error" }, `virtport list --guards: ${e.message}`));
    }
}

function renderGuards() {
    if (!state.guards.length) {
        $("guards").replaceChildren(el("p", { class: "vp-muted" }, "No guarded bridge ports (a VM with <vp:guard> runs, or [guard] bridges)."));
        return;
    }
    const table = el("table", { class: "pf-c-table pf-m-compact pf-m-grid-md", "aria-label": "Guarded bridge ports" },
        el("thead", {}, el("tr", {}, ["VM", "Port", "MAC", "Allowed addresses", "Flags", "Dropped frames"].map(h => el("th", { scope: "col" }, h)))),
        el("tbody", {}, state.guards.map(g => {
            const flags = [g.spoofing ? "spoofing on" : "spoofing off", `DHCP server ${g.dhcp_server}`, `RA ${g.router_advert}`,
                g.isolated ? `isolated${g.isolated_by_virtport ? "" : " (not by virtport)"}` : null].filter(Boolean);
            const dropped = g.dropped
                ? Object.entries(g.dropped).filter(([, n]) => n > 0).map(([k, n]) => `${k}: ${n}`)
                : null;
            const total = g.dropped ? Object.values(g.dropped).reduce((a, b) => a + b, 0) : null;
            return el("tr", { "data-tap": g.tap, "data-domain": g.domain },
                el("td", { "data-label": "VM" }, g.domain),
                el("td", { "data-label": "Port" }, g.tap, g.bridge ? el("span", { class: "vp-muted" }, ` on ${g.bridge}`) : null),
                el("td", { "data-label": "MAC" }, g.mac),
                el("td", { "data-label": "Allowed addresses" }, g.addresses.length
                    ? el("ul", { class: "vp-plain" }, g.addresses.map(a => el("li", {}, a.address, el("span", { class: "vp-muted" }, ` (${a.source})`))))
                    : (g.spoofing ? "(DHCP only)" : "any")),
                el("td", { "data-label": "Flags" }, flags.join(", ")),
                el("td", { "data-label": "Dropped frames", class: "vp-dropped" }, total === null
                    ? "? (kernel not readable)"
                    : [`${total} total`, dropped.length ? el("ul", { class: "vp-plain" }, dropped.map(d => el("li", {}, d))) : null]));
        })));
    $("guards").replaceChildren(table);
}

/* -- history: holdings (VM, from, to) per host port ------------------------------------------------ */

async function loadHistory() {
    try {
        state.history = await runJSON([VIRTPORT, "history", "--json"]);
        renderHistory();
    } catch (e) {
        $("timeline").replaceChildren(el("p", { class: "vp-error" }, `virtport history: ${e.message}`));
    }
}

/* Pairs each add with the remove that ended it (same domain uuid, proto, host address, first port). */
function holdings(events) {
    const open = new Map(), out = [];
    const sorted = [...events].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    for (const e of sorted) {
        const key = [e.uuid, e.proto, e.host_address || "*", e.host_port_start].join("|");
        const at = Date.parse(e.at);
        if (e.action === "add") {
            const prev = open.get(key);
            if (prev) { prev.to = at; prev.removedBy = e.reason }   // replaced (a pending forward completed)
            const h = { lane: `${e.proto} ${ports(e.host_port_start, e.host_port_end)}${e.host_address ? ` on ${e.host_address}` : ""}`,
                proto: e.proto, port: e.host_port_start, portEnd: e.host_port_end, domain: e.domain, uuid: e.uuid,
                host: hostText(e), guest: guestText(e), from: at, to: null, addedBy: e.reason, removedBy: null };
            open.set(key, h);
            out.push(h);
        } else if (e.action === "remove") {
            const h = open.get(key);
            if (h) { h.to = at; h.removedBy = e.reason; open.delete(key) }
        }
    }
    return out;
}

const ZOOM_MS = { day: 86400e3, week: 7 * 86400e3 };
const PALETTE = 8;

function renderHistory() {
    const all = holdings(state.history);
    const now = Date.now();
    // "all": from the first holding to now (a minute at least), with a margin before it.
    const first = Math.min(now, ...all.map(h => h.from));
    const span = state.zoom === "all" ? Math.max(10e3, (now - first) * 1.05) : ZOOM_MS[state.zoom];
    const start = now - span;
    const visible = all.filter(h => (h.to ?? now) >= start);
    const lanes = [...new Set(visible.map(h => h.lane))].sort((a, b) => {
        const pa = visible.find(h => h.lane === a), pb = visible.find(h => h.lane === b);
        return pa.port - pb.port || a.localeCompare(b);
    });
    const domains = [...new Set(all.map(h => h.domain))].sort();

    const tl = el("div", { class: "vp-tl", role: "group", "aria-label": `Timeline of host ports, ${state.zoom === "all" ? "all history" : `last ${state.zoom}`}` });
    const axis = el("div", { class: "vp-tl-axis", "aria-hidden": "true" }, el("div", { class: "vp-tl-lane-label" }));
    const ticks = el("div", { class: "vp-tl-track vp-tl-ticks" });
    for (let i = 0; i <= 4; i++) {
        const text = localTime(start + span * i / 4);      // YYYY-MM-DD HH:MM:SS, as precise as the span needs
        const t = el("span", { class: "vp-tl-tick" }, span <= 3600e3 ? text.slice(11) : span <= 86400e3 ? text.slice(11, 16) : text.slice(5, 16));
        t.style.left = `${i * 25}%`;
        ticks.append(t);
    }
    axis.append(ticks);
    tl.append(axis);
    for (const lane of lanes) {
        const track = el("div", { class: "vp-tl-track" });
        for (const h of visible.filter(x => x.lane === lane)) {
            const from = Math.max(h.from, start), to = h.to ?? now;
            const details = `${h.lane}: ${h.domain}, ${localTime(h.from)} to ${h.to ? localTime(h.to) : "now (still held)"}`
                + ` (${duration(to - h.from)}); ${h.host} to ${h.guest}; added by ${h.addedBy}${h.removedBy ? `, removed by ${h.removedBy}` : ""}`;
            const bar = el("button", {
                type: "button", class: `vp-bar vp-c${domains.indexOf(h.domain) % PALETTE}${h.to ? "" : " vp-open"}`,
                "data-port": String(h.port), "data-domain": h.domain, "aria-label": details,
            }, el("span", { class: "vp-bar-text" }, h.domain));
            bar.style.left = `${(from - start) / span * 100}%`;
            bar.style.width = `${Math.max(0.6, (to - from) / span * 100)}%`;
            const show = () => { $("bar-details").textContent = details };
            bar.addEventListener("mouseenter", show);
            bar.addEventListener("focus", show);
            bar.addEventListener("click", show);
            track.append(bar);
        }
        tl.append(el("div", { class: "vp-tl-lane", "data-lane": lane }, el("div", { class: "vp-tl-lane-label" }, lane), track));
    }
    $("timeline").replaceChildren(lanes.length ? tl : el("p", { class: "vp-muted" }, "No holdings in this period."));

    const rows = [...all].sort((a, b) => a.port - b.port || a.from - b.from);
    $("history-table").replaceChildren(el("table", { class: "pf-c-table pf-m-compact pf-m-grid-md", "aria-label": "Holdings per host port" },
        el("thead", {}, el("tr", {}, HISTORY_COLUMNS.map(c => el("th", { scope: "col" }, c)))),
        el("tbody", {}, rows.map(h => el("tr", { "data-port": String(h.port) },
            historyRow(h, localTime, "still held").map((v, i) => el("td", { "data-label": HISTORY_COLUMNS[i] }, v)))))));
}

const HISTORY_COLUMNS = ["Host port", "VM", "Host", "Guest", "From", "To", "Added by", "Removed by"];
function historyRow(h, time, open) {
    return [h.lane, h.domain, h.host, h.guest, time(h.from), h.to ? time(h.to) : open, h.addedBy, h.removedBy || ""];
}

function exportCSV() {
    const iso = ms => new Date(ms).toISOString();
    const field = v => /[",\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
    const lines = [HISTORY_COLUMNS, ...holdings(state.history).map(h => historyRow(h, iso, ""))].map(r => r.map(field).join(","));
    const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    const a = el("a", { href: url, download: "virtport-history.csv" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/* -- doctor --------------------------------------------------------------------------------------- */

async function loadDoctor() {
    $("doctor").replaceChildren(el("p", { class: "vp-muted" }, "Checking…"));
    const r = await run([VIRTPORT, "doctor", "--json"]);     // exit 1 means "findings", still JSON
    let findings;
    try { findings = JSON.parse(r.out) } catch (e) {
        $("doctor").replaceChildren(el("p", { class: "vp-error" }, `virtport doctor: ${r.err || e.message}`));
        return;
    }
    const order = { fail: 0, warn: 1, ok: 2 };
    findings.sort((a, b) => (order[a.status] ?? 1) - (order[b.status] ?? 1));
    const color = { fail: "pf-m-red", warn: "pf-m-orange", ok: "pf-m-green" };
    $("doctor").replaceChildren(el("ul", { class: "vp-findings", "aria-label": "Doctor findings" }, findings.map(f =>
        el("li", { class: `vp-finding vp-${f.status}`, "data-check": f.check },
            el("div", { class: "vp-finding-head" },
                el("span", { class: `pf-c-label pf-m-compact ${color[f.status] || ""}` }, el("span", { class: "pf-c-label__content" }, f.status)),
                " ", el("strong", {}, f.check), " ", f.problem || f.detail),
            f.why ? el("div", { class: "vp-why" }, el("span", { class: "vp-muted" }, "Why: "), f.why) : null,
            f.fix ? el("div", { class: "vp-fix" }, el("span", { class: "vp-muted" }, "Fix: "), el("code", {}, f.fix), " ",
                el("button", { type: "button", class: "pf-c-button pf-m-link pf-m-inline", "aria-label": `Copy the fix for ${f.check}`,
                    onclick: () => copy(f.fix) }, "Copy")) : null))));
}

async function copy(text) {
    try {
        await navigator.clipboard.writeText(text);
        $("copy-status").textContent = "Copied to the clipboard.";
    } catch (e) {
        // No clipboard permission (an iframe without it): select the text so Ctrl+C copies it.
        const area = el("textarea", { class: "vp-sr-only", readonly: true, "aria-label": "Fix command" });
        area.value = text;
        document.body.append(area);
        area.select();
        const ok = document.execCommand && document.execCommand("copy");
        area.remove();
        $("copy-status").textContent = ok ? "Copied to the clipboard." : "Copy failed: select the command and press Ctrl+C.";
    }
}

/* -- views, tabs (WAI-ARIA tabs pattern: arrows move, Enter/Space or focus selects) --------------- */

let guardTimer = null;
function show(view) {
    state.view = view;
    for (const tab of document.querySelectorAll('[role="tab"]')) {
        const on = tab.id === `tab-${view}`;
        tab.setAttribute("aria-selected", String(on));
        tab.tabIndex = on ? 0 : -1;
        tab.parentElement.classList.toggle("pf-m-current", on);
        $(tab.getAttribute("aria-controls")).hidden = !on;
    }
    clearInterval(guardTimer);
    guardTimer = null;
    if (view === "guards") { loadGuards(); guardTimer = setInterval(loadGuards, GUARD_POLL_MS) }
    if (view === "history") loadHistory();
    if (view === "doctor") loadDoctor();
    cockpit.location.replace([], view === "forwards" ? {} : { view });
}

function setupTabs() {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    tabs.forEach((tab, i) => {
        tab.addEventListener("click", () => show(tab.id.slice(4)));
        tab.addEventListener("keydown", ev => {
            let j = null;
            if (ev.key === "ArrowRight") j = (i + 1) % tabs.length;
            else if (ev.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
            else if (ev.key === "Home") j = 0;
            else if (ev.key === "End") j = tabs.length - 1;
            if (j === null) return;
            ev.preventDefault();
            tabs[j].focus();
            show(tabs[j].id.slice(4));
        });
    });
}

function setupToggle(id, attr, apply) {
    for (const b of $(id).querySelectorAll("button")) {
        b.addEventListener("click", () => {
            for (const o of $(id).querySelectorAll("button")) o.setAttribute("aria-pressed", String(o === b));
            apply(b.dataset[attr]);
        });
    }
}

/* -- live: the journal's directory --------------------------------------------------------------- */

async function databasePath() {
    // The same file every command reads ([paths] database, or the top-level key as the lab writes it).
    // VIRTPORT_CONFIG in the bridge's environment names another file, as for every command.
    const env = await run(["printenv", "VIRTPORT_CONFIG"], { superuser: "try" });
    const path = env.status === 0 && env.out.trim() ? env.out.trim() : "/etc/virtport/virtport.conf";
    try {
        const text = await cockpit.file(path, { superuser: "try" }).read();
        const m = /^\s*database\s*=\s*"([^"]+)"/m.exec(text || "");
        if (m) return m[1];
    } catch (e) { /* unreadable: the default */ }
    return DEFAULT_DB;
}

let changeTimer = null;
function changed() {
    clearTimeout(changeTimer);
    changeTimer = setTimeout(refresh, 150);
}

async function watch() {
    const db = await databasePath();
    const dir = db.replace(/\/[^/]*$/, "") || "/";
    const base = db.slice(dir.length + 1);
    const channel = cockpit.channel({ payload: "fswatch1", path: dir, superuser: "try" });
    channel.addEventListener("message", (ev, payload) => {
        let m;
        try { m = JSON.parse(payload) } catch (e) { return }
        const name = (m.path || "").split("/").pop();
        // The database and its WAL change with every write; -shm also changes when readers come and go (ours included).
        if ((name === base || name === `${base}-wal` || name === `${base}-journal`) && m.event !== "attribute-changed") changed();
    });
    channel.addEventListener("close", (ev, options) => {
        state.watching = false;
        document.body.dataset.watch = `closed: ${(options && options.problem) || "closed"}`;
        // The journal's directory may not exist yet (no hook has run): watch again a little later.
        setTimeout(() => watch().catch(() => {}), 5000);
    });
    state.watching = true;
    document.body.dataset.watch = dir;
}

/* -- start ---------------------------------------------------------------------------------------- */

async function findVirtport() {
    const r = await run([VIRTPORT, "version"]);
    if (r.problem !== "not-found") return;
    for (const path of VIRTPORT_PLACES) {
        if ((await run([path, "version"])).status === 0) { VIRTPORT = path; return }
    }
}

function init() {
    applyTheme();
    window.addEventListener("storage", ev => { if (ev.key === "shell:style") applyTheme() });
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh() });

    setupTabs();
    $("add-form").addEventListener("submit", addForward);
    $("filter-domain").addEventListener("change", renderForwards);
    $("filter-state").addEventListener("change", renderForwards);
    setupToggle("zoom", "zoom", z => { state.zoom = z; renderHistory() });
    setupToggle("history-mode", "mode", m => {
        state.historyMode = m;
        $("timeline").hidden = m !== "timeline";
        $("history-table").hidden = m !== "table";
        $("bar-details").hidden = m !== "timeline";
    });
    $("csv-export").addEventListener("click", exportCSV);
    $("doctor-run").addEventListener("click", loadDoctor);

    const view = cockpit.location.options.view;
    findVirtport().then(refresh).then(() => {
        document.body.dataset.loaded = "true";
        if (["guards", "history", "doctor"].includes(view)) show(view);
    });
    watch().catch(e => { document.body.dataset.watch = `failed: ${e.message}` });
    setInterval(() => { if (!document.hidden) refresh() }, FALLBACK_POLL_MS);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
