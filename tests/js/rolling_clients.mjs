// Many real WHATWG EventSources (npm `eventsource` v4) in one Node.js
// process, for the rolling-deploy harness (benches/rolling_deploy.rs).
//
// usage: node rolling_clients.mjs URL CLIENTS EVENTS SECONDS
//
// Opens CLIENTS EventSources to URL. Every message's data is a number
// 0..EVENTS-1, or "end", or "end N": then only 0..N-1 were published (N at
// most EVENTS; the scale-out scenario publishes until its window is over). Per client it counts what it receives: duplicates
// (a number seen before), out of order (a number below the highest seen so
// far, first time seen), lost (numbers never seen once "end" arrived or the
// time ran out), reconnects (opens after the first), refusals
// (`sse-cluster.refused`), resets and gaps, and whether the client ever
// reached readyState CLOSED on its own (an EventSource that gave up).
//
// Prints JSON lines on stdout:
//   {"type":"ready","clients":N}   once every client has had its greeting
//   {"type":"summary",...}         when every client has seen "end", or
//                                  after SECONDS (then "timed_out": true)
// and exits 0 (1 after a timeout).
import { EventSource } from 'eventsource';

const [url, clientsArg, eventsArg, secondsArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg || 300);
const EVENTS = Number(eventsArg || 600);
const LIMIT_MS = Number(secondsArg || 120) * 1000;
// The events published, as "end N" tells (EVENTS unless it says fewer).
let published = EVENTS;
const started = Date.now();
const now = () => Date.now() - started;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// The last few things a client saw, for the report on a failed client.
const TRAIL = 40;

const clients = [];
let greeted = 0;
let ended = 0;
let readySent = false;

function record(c, entry) {
  c.trail.push({ t: now(), ...entry });
  if (c.trail.length > TRAIL) c.trail.shift();
}

// Ranges of numbers, e.g. [3, 4, 5, 9] -> "3-5,9".
function ranges(nums) {
  const sorted = [...nums].sort((a, b) => a - b);
  const parts = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

function open(index) {
  const c = {
    index,
    es: null,
    seen: new Uint8Array(EVENTS),
    max: -1,
    received: 0,
    dups: [],
    ooo: [],
    opens: 0,
    errors: 0,
    refused: 0,
    resets: 0,
    gaps: 0,
    greetings: [],
    closed: false,
    closedAt: null,
    ended: false,
    unknown: [],
    trail: [],
  };
  const es = new EventSource(url);
  c.es = es;
  es.onopen = () => {
    c.opens++;
    record(c, { type: 'open' });
  };
  es.onerror = (event) => {
    c.errors++;
    record(c, { type: 'error', readyState: es.readyState, message: event && event.message, code: event && event.code });
    // readyState CLOSED after an error: the EventSource gave up for good.
    if (es.readyState === 2 && !c.ended) {
      c.closed = true;
      c.closedAt = now();
      maybeFinish();
    }
  };
  es.addEventListener('connected', (event) => {
    if (c.greetings.length === 0) {
      greeted++;
      if (greeted === CLIENTS && !readySent) {
        readySent = true;
        out({ type: 'ready', clients: CLIENTS, ms: now() });
      }
    }
    c.greetings.push(event.data);
    record(c, { type: 'connected', data: event.data, id: event.lastEventId });
  });
  for (const [type, key] of [
    ['sse-cluster.refused', 'refused'],
    ['sse-cluster.reset', 'resets'],
    ['sse-cluster.gap', 'gaps'],
  ]) {
    es.addEventListener(type, (event) => {
      c[key]++;
      record(c, { type, data: event.data, id: event.lastEventId });
    });
  }
  es.addEventListener('message', (event) => {
    const data = event.data;
    if (data === 'end' || data.startsWith('end ')) {
      const count = Number(data.slice(4));
      if (data.length > 4 && Number.isInteger(count) && count >= 0 && count <= EVENTS) published = count;
      record(c, { type: 'end', id: event.lastEventId });
      if (!c.ended) {
        c.ended = true;
        ended++;
        es.close();
        maybeFinish();
      }
      return;
    }
    const n = Number(data);
    if (!Number.isInteger(n) || n < 0 || n >= EVENTS) {
      c.unknown.push(data);
      record(c, { type: 'unknown', data, id: event.lastEventId });
      return;
    }
    c.received++;
    if (c.seen[n]) {
      c.dups.push(n);
      record(c, { type: 'duplicate', data: n, id: event.lastEventId });
    } else {
      if (n < c.max) {
        c.ooo.push([c.max, n]);
        record(c, { type: 'out-of-order', data: n, after: c.max, id: event.lastEventId });
      }
      c.seen[n] = 1;
    }
    if (n > c.max) c.max = n;
    // Keep the trail useful: only every 50th plain event.
    if (n % 50 === 0) record(c, { type: 'message', data: n, id: event.lastEventId });
  });
  clients.push(c);
}

let finished = false;
function maybeFinish(timedOut = false) {
  if (finished) return;
  const settled = clients.filter((c) => c.ended || c.closed).length;
  if (!timedOut && settled < CLIENTS) return;
  finished = true;
  clearTimeout(timer);
  let lost = 0, dup = 0, ooo = 0, closed = 0, reconnects = 0, refused = 0, resets = 0, gaps = 0, errors = 0, unknown = 0;
  const failed = [];
  const perNode = {};
  for (const c of clients) {
    const missing = [];
    for (let n = 0; n < published; n++) if (!c.seen[n]) missing.push(n);
    lost += missing.length;
    dup += c.dups.length;
    ooo += c.ooo.length;
    closed += c.closed ? 1 : 0;
    reconnects += Math.max(0, c.opens - 1);
    refused += c.refused;
    resets += c.resets;
    gaps += c.gaps;
    errors += c.errors;
    unknown += c.unknown.length;
    for (const g of c.greetings) {
      const node = String(g).split('.')[0];
      perNode[node] = (perNode[node] || 0) + 1;
    }
    if (missing.length || c.dups.length || c.ooo.length || c.closed || !c.ended || c.unknown.length || c.resets) {
      failed.push({
        client: c.index,
        ended: c.ended,
        closed: c.closed,
        closed_at_ms: c.closedAt,
        readyState: c.es.readyState,
        missing: ranges(missing),
        duplicates: ranges(c.dups),
        out_of_order: c.ooo.slice(0, 20),
        unknown: c.unknown.slice(0, 10),
        opens: c.opens,
        errors: c.errors,
        refused: c.refused,
        resets: c.resets,
        gaps: c.gaps,
        greetings: c.greetings,
        trail: c.trail,
      });
    }
    c.es.close();
  }
  out({
    type: 'summary',
    timed_out: timedOut,
    clients: CLIENTS,
    events: published,
    ended,
    lost,
    duplicated: dup,
    out_of_order: ooo,
    closed,
    reconnects,
    refused,
    resets,
    gaps,
    errors,
    unknown,
    connections_per_node: perNode,
    ms: now(),
    failed_clients: failed.length,
    failed: failed.slice(0, 10),
  });
  // Let stdout drain before leaving.
  process.stdout.write('', () => process.exit(timedOut ? 1 : 0));
}

const timer = setTimeout(() => maybeFinish(true), LIMIT_MS);

for (let i = 0; i < CLIENTS; i++) open(i);

// The harness asks for the summary early by closing our stdin (or with
// SIGTERM): report what we have.
process.on('SIGTERM', () => maybeFinish(true));
process.stdin.on('end', () => maybeFinish(true));
process.stdin.resume();
